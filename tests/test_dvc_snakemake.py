"""dvc.yaml wraps Snakemake: no drift between the two, and the workflow lints clean."""

import re
import subprocess

import pytest

from tests.conftest import ROOT

# Rules that fetch and unpack raw archives into data/raw/: their outputs are deliberately not DVC
# outputs (hundreds of GB for ImageNet, and licensed data that must not be pushed to a DVC remote);
# DVC versions the prepared tables, which index those files. The prepare_data stage runs them.
RAW_RULES = {"download", "extract"}


# Few-shot draws (run "k<shots>-draw<n>"; SST2 runs 450): DVC cannot declare them (no matrix can
# read presets.<benchmark>.fewshot, and draws is a count), so its report stage runs these rules and
# versions the table; their checkpoints are temp() files.
FEWSHOT_RULES = {"finetune_fewshot", "evaluate"}
FEWSHOT_DRAW = re.compile(r"^(models|results)/[^/]+/[^/]+/k\d+-draw\d+/")


def is_raw_download(path: str, rule: str) -> bool:
    return rule in RAW_RULES and path.startswith("data/raw/")


def is_fewshot_draw(path: str, rule: str) -> bool:
    return rule in FEWSHOT_RULES and bool(FEWSHOT_DRAW.match(path))


def snakemake_outputs(*config: str) -> dict[str, str]:
    """Every file of the DAG for results/table.csv -> the rule that makes it (``config``:
    KEY=VALUE overrides of params.yaml)."""
    extra = ["--config", *config] if config else []
    out = subprocess.run(["snakemake", "--summary", "--cores", "1", *extra, "--",
                          "results/table.csv"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()[1:] if line.strip()]
    return {row[0]: row[2] for row in rows}


def dvc_stages(root=ROOT) -> dict[str, dict]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
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


def check_versioned(smk: dict[str, str], stages: dict[str, dict]) -> None:
    """Every Snakemake output is a DVC output, except exactly the raw downloads, which the stage
    that prepares the tables must be allowed to make, and the few-shot draws, which the report
    stage must be allowed to make."""
    declared = set().union(*(s["outs"] for s in stages.values()))
    raw = {path for path, rule in smk.items() if is_raw_download(path, rule)}
    draws = {path for path, rule in smk.items() if is_fewshot_draw(path, rule)}
    assert set(smk) - raw - draws == declared
    assert not raw & declared, "raw downloads must not be DVC outputs"
    assert not draws & declared, "few-shot draws are made by the report stage"
    if draws:
        report = next(s for s in stages.values() if "results/table.csv" in s["outs"])
        allowed = re.search(r"--allowed-rules (.*?) --", report["cmd"]).group(1).split()
        assert {smk[p] for p in draws} <= set(allowed)
    if raw:
        prepare = next(s for s in stages.values() if any(o.endswith("/tables") for o in s["outs"]))
        allowed = re.search(r"--allowed-rules (.*?) --", prepare["cmd"]).group(1).split()
        assert {smk[p] for p in raw} <= set(allowed)


def test_every_snakemake_output_is_versioned_by_dvc(both):
    check_versioned(*both)


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
