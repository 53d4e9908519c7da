"""A new method is a file in flyp/methods/ that registers itself, and its name in params.yaml's
`methods`: the DAG then trains, evaluates and reports it like the others, and the tests that count
methods, jobs and grids read the registry and params.yaml, so none of them needs an edit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

THROWAWAY = '''"""A stand-in for a new method: FT under another name."""

from flyp.methods import register_method
from flyp.methods.ft import FullFinetune


@register_method("throwaway")
class Throwaway(FullFinetune):
    pass
'''
PROJECT_FILES = ["Snakefile", "params.yaml", "pyproject.toml", "workflow", "flyp", "tests"]
# The tests that counted methods, training jobs or grids by hand before they read the registry.
REGISTRY_TESTS = [
    "tests/test_profiles.py",
    "tests/test_dvc_snakemake.py::test_seedless_methods_run_once_and_every_seed_reuses_the_run",
    "tests/test_dvc_snakemake.py::test_training_does_not_reach_test_time_evaluation",
    "tests/test_sweep.py::test_the_real_presets_keep_the_papers_values_and_the_embedded_one_sweeps_lr",
]


@pytest.mark.slow
def test_a_new_method_file_runs_in_the_dag_and_needs_no_test_edit(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    for name in PROJECT_FILES:
        src, dst = ROOT / name, root / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    (root / "flyp/methods/throwaway.py").write_text(THROWAWAY)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["methods"].append("throwaway")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "FLYP_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)

    dry = subprocess.run(
        ["snakemake", "-n", "-p", "--forceall", "--cores", "2", "--", "results/table.csv"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    out = dry.stdout
    for seed in params["seeds"]:
        run = f"models/embedded/throwaway/seed{seed}/best.safetensors"
        assert re.search(rf"flyp finetune .*--method throwaway .*--out {run} ", out), seed
        assert f"--checkpoint {run} " in out  # evaluated and weight-ensembled
    assert re.search(r"flyp report .*--methods=\S*throwaway", out)

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            "-m",
            "slow or not slow",
            *REGISTRY_TESTS,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-5000:]
    assert re.search(r"\b\d+ passed\b", done.stdout) and " failed" not in done.stdout
