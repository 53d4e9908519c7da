"""dvc.yaml wraps Snakemake: no drift between the two, and the workflow lints clean."""

import re
import subprocess

import pytest

from tests.conftest import ROOT


def snakemake_outputs() -> dict[str, str]:
    """Every file of the DAG for results/table.csv -> the rule that makes it."""
    out = subprocess.run(["snakemake", "--summary", "--cores", "1", "results/table.csv"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()[1:] if line.strip()]
    return {row[0]: row[2] for row in rows}


def dvc_stages() -> dict[str, dict]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = {}
        for stage in repo.index.stages:
            stages[stage.addressing] = {
                "cmd": stage.cmd,
                "outs": {str(o.def_path) for o in stage.outs},
                "deps": {str(d.def_path) for d in stage.deps},
            }
    return stages


@pytest.fixture(scope="module")
def both():
    return snakemake_outputs(), dvc_stages()


def test_every_dvc_output_is_made_by_the_rules_its_stage_runs(both):
    smk, stages = both
    for name, stage in stages.items():
        allowed = re.search(r"--allowed-rules (.*?) --", stage["cmd"]).group(1).split()
        targets = stage["cmd"].split(" -- ", 1)[1].split()
        assert set(targets) <= stage["outs"], name
        for out in stage["outs"]:
            assert out in smk, f"DVC stage {name} declares {out}, which Snakemake never makes"
            assert smk[out] in allowed, f"{out} is made by rule {smk[out]}, not run by {name}"


def test_every_snakemake_output_is_versioned_by_dvc(both):
    smk, stages = both
    declared = set().union(*(s["outs"] for s in stages.values()))
    assert set(smk) == declared


def test_stage_dependencies_follow_the_dag(both):
    smk, stages = both
    producer = {out: name for name, s in stages.items() for out in s["outs"]}
    # finetuning depends on the pretrained model, evaluation on the finetuned one
    for name, stage in stages.items():
        for dep in stage["deps"]:
            if dep in producer:
                assert producer[dep] != name


def test_snakemake_lint_is_clean():
    done = subprocess.run(["snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Lints for" not in done.stdout + done.stderr
