"""End to end, as a user runs it, on the `smoke` scale with a shortened method list (one per kind:
no training, a linear probe, a method built on another's checkpoint, FLYP), one seed, a coarse
weight-ensembling grid and one few-shot draw: Snakemake to the table, a no-op rerun, the same table
from the same seed, `dvc exp run -S lr=...`, `dvc metrics diff`, `dvc exp show`.

Everything runs in a temporary copy of the project (its own git repo, DVC cache and Snakemake
state), so the working tree is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SMOKE_METHODS = ["zeroshot", "lp", "lpft", "flyp"]
# What a fresh clone holds (outputs of earlier runs are left behind).
PROJECT_FILES = ["Snakefile", "params.yaml", "dvc.yaml", "pyproject.toml", ".gitignore",
                 ".dvcignore", "workflow", "flyp", ".dvc/config", ".dvc/.gitignore"]


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        src, dst = ROOT / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(scale="smoke", seeds=[0], methods=SMOKE_METHODS, alphas=[0.0, 0.5, 1.0])
    params["presets"]["embedded"]["fewshot"] = {
        "shots": [2], "draws": 1, "methods": ["flyp"],
        "finetune": {"epochs": 2, "batch_size": None, "warmup_steps": 0}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(root / ".dvc-site-cache"),
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@example.org"}
    env.pop("DVC_STAGE", None)
    run(["git", "init", "-q"], root, env)
    run(["git", "config", "user.name", "test"], root, env)
    run(["git", "config", "user.email", "t@example.org"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    return root, env


@pytest.fixture(scope="module")
def built(project):
    root, env = project
    first = run(["snakemake", "--cores", "2", "results/table.csv"], root, env)
    return root, env, first


def test_snakemake_builds_the_table(built):
    root, _, _ = built
    table = pd.read_csv(root / "results/table.csv")
    assert list(table["method"]) == [*SMOKE_METHODS, "lp+wise", "lpft+wise", "flyp+wise",
                                     "flyp@2shot"]
    for column in ["id", "id_std", "v2", "sketch", "r", "a", "objectnet", "avg_ood", "runs",
                   "eff_robustness", "best_epoch", "seed", "alpha", "checkpoint_sha256",
                   "data_hash", "params_hash", "git_revision"]:
        assert column in table.columns
    assert table[["id", "v2", "sketch", "r", "a", "objectnet"]].apply(
        lambda c: c.between(0, 100)).all().all()
    ood = table[["v2", "sketch", "r", "a", "objectnet"]].mean(axis=1)
    assert (ood - table["avg_ood"]).abs().max() < 0.02
    plain = table[~table["method"].str.contains(r"\+|@")]
    assert plain["checkpoint_sha256"].is_unique and plain["params_hash"].is_unique
    assert table.loc[table["method"] == "flyp+wise", "alpha"].iloc[0] in (0, 0.5, 1)
    metrics = json.loads((root / "results/metrics.json").read_text())
    assert set(metrics) == set(table["method"])
    assert {"id", "id_std", "v2", "avg_ood", "eff_robustness"} <= set(metrics["flyp"])
    assert (root / "results/plots/id_vs_ood.png").stat().st_size > 10_000
    curve = pd.read_csv(root / "results/plots/id_vs_ood.csv")
    assert set(curve["method"]) == {"lp", "lpft", "flyp"} and set(curve["alpha"]) == {0, .5, 1}
    log = pd.read_csv(root / "models/embedded/flyp/seed0/train_log.csv")
    assert list(log["epoch"]) == [1, 2]
    assert {"lr", "train_loss", "val_metric", "val_score", "val_loss"} <= set(log.columns)
    assert (root / "dvc.lock").is_file()  # the run was recorded in DVC


def test_second_run_does_nothing(built):
    root, env, _ = built
    before = (root / "results/table.csv").stat().st_mtime_ns
    again = run(["snakemake", "--cores", "2", "results/table.csv"], root, env)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert (root / "results/table.csv").stat().st_mtime_ns == before


def test_same_seed_gives_the_same_table(built):
    root, env, _ = built
    before = pd.read_csv(root / "results/table.csv")
    run(["snakemake", "--cores", "2", "--forcerun", "pretrain", "--", "results/table.csv"],
        root, env)
    after = pd.read_csv(root / "results/table.csv")
    pd.testing.assert_frame_equal(before, after)


def test_dvc_experiment_reruns_only_finetuning_and_evaluation(built):
    root, env, _ = built
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline results"], root, env)
    pretrained = (root / "models/embedded/pretrained.safetensors").read_bytes()
    exp = run(["dvc", "exp", "run", "-S", "lr=3e-4"], root, env)
    out = exp.stdout + exp.stderr
    for stage in ["prepare_data", "captions", "pretrain"]:
        assert f"'{stage}' didn't change, skipping" in out, out
    for stage in ["finetune@lpft-0", "finetune@flyp-0", "evaluate@flyp-0", "report"]:
        assert f"Running stage '{stage}'" in out, out
    assert (root / "models/embedded/pretrained.safetensors").read_bytes() == pretrained
    assert yaml.safe_load((root / "params.yaml").read_text())["lr"] in (3e-4, "3e-4", "0.0003")

    diff = run(["dvc", "metrics", "diff", "--json"], root, env)
    changes = json.loads(diff.stdout)["results/metrics.json"]
    assert any(key.startswith("flyp.") for key in changes)
    assert any(key.startswith("lpft.") for key in changes)
    # lr touches neither zero-shot nor the linear probe (whose rows stay as they were)
    assert not any(key.startswith(("zeroshot.id", "lp.id")) for key in changes)

    show = run(["dvc", "exp", "show", "--json"], root, env)
    assert "0.0003" in show.stdout or "3e-4" in show.stdout or "3e-04" in show.stdout
    assert "avg_ood" in show.stdout
