"""Several pretraining seeds (a criterion of a fair miniature): one CLIP pretrained per seed,
shared by every method; run i of each method (seed i, few-shot draw i) starts from the (i mod
n)-th, so that the table's mean and std over a method's runs take in the pretraining's variance
(the embedded default: three). One seed leaves the DAG as it was before there were several."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from flyp.io import UserError
from flyp.workflow.config import load_params
from tests.conftest import ROOT
from tests.test_miniature import miniature
from tests.test_sweep import _project, dry_run

SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"


@pytest.fixture()
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_pretraining_seeds_are_a_list_or_the_one_seed(params):
    assert load_params(params, SCHEMA)["pretrain_seeds"] == [0, 1, 2]
    params["presets"]["embedded"]["pretrain"]["seeds"] = [3, 1]
    assert load_params(params, SCHEMA)["pretrain_seeds"] == [3, 1]
    del params["presets"]["embedded"]["pretrain"]["seeds"]
    params["presets"]["embedded"]["pretrain"]["seed"] = 4
    assert load_params(params, SCHEMA)["pretrain_seeds"] == [4]
    params["benchmark"] = "imagenet"  # released weights: nothing pretrained here
    assert load_params(params, SCHEMA)["pretrain_seeds"] == []


@pytest.mark.parametrize(
    "where, value, expected",
    [
        ("pretrain", [], "pretrain.seeds: [] should be non-empty"),
        ("pretrain", [1, 1], "pretrain.seeds: [1, 1] has non-unique elements"),
        ("finetune", [0, 1], "finetune.seeds: finetuning seeds are the top-level `seeds`"),
    ],
)
def test_bad_pretraining_seeds_are_one_line(params, where, value, expected):
    params["presets"]["embedded"][where]["seeds"] = value
    with pytest.raises(UserError, match=re.escape(expected)) as err:
        load_params(params, SCHEMA)
    assert "\n" not in str(err.value)


def _commands(jobs, command):
    return [
        line.split("Shell command: ", 1)[1]
        for job in jobs
        for line in job.splitlines()
        if line.startswith("Shell command: ") and f" {command} " in line
    ]


def test_each_run_starts_from_its_own_pretrained_model(tmp_path):
    one = dry_run(_project(tmp_path / "one", sweep={}, pretrain_seeds=0))
    assert dry_run(_project(tmp_path / "list", sweep={}, pretrain_seeds=[0])) == one
    assert not any("seed0.safetensors" in job for job in one)  # the one-seed names
    jobs = dry_run(_project(tmp_path / "three", sweep={}, pretrain_seeds=[0, 1, 2]))

    pretrained = {
        re.search(r"--out (\S+)", c).group(1): re.search(r"--seed (\d+)", c).group(1)
        for c in _commands(jobs, "pretrain")
    }
    assert pretrained == {
        f"models/embedded/pretrained-seed{s}.safetensors": str(s) for s in range(3)
    }
    starts = {}
    for command in _commands(jobs, "finetune") + _commands(jobs, "fewshot"):  # full runs, draws
        run = re.search(r"--out models/embedded/\w+/([\w/-]+)/best", command).group(1)
        index = int(run[-1])  # seedN, kK/drawN
        model = re.search(r"--pretrained (\S+)", command).group(1)
        assert model == f"models/embedded/pretrained-seed{index}.safetensors", command
        if features := re.search(r"-o features=(\S+)", command):
            assert features.group(1) == f"models/embedded/features-seed{index}.safetensors"
        starts[run] = model
    assert len(set(starts.values())) == 3
    # Zero-shot and the linear probe now depend on the seed: each seed runs its own, and each
    # run's weight ensemble mixes with the zero-shot model of its own pretraining.
    assert not [j for j in jobs if j.startswith(("rule reuse_seedless", "localrule reuse"))]
    for command in _commands(jobs, "evaluate"):
        if "--ensemble-with" in command:
            run = re.search(r"--checkpoint models/embedded/\w+/(seed\d)/", command).group(1)
            assert f"--ensemble-with models/embedded/zeroshot/{run}/best" in command


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-seeds-sweep")
def test_two_pretraining_seeds_run_to_a_table_whose_error_bars_cover_both(smoke_seeds_and_sweep):
    """Smoke scale, end to end: two pretrained models, each method's run i from the i-th; the
    table's rows pool both, and the miniature check counts two pretrained models."""
    root, _, _ = smoke_seeds_and_sweep

    models = [root / f"models/embedded/pretrained-seed{s}.safetensors" for s in (0, 1)]
    assert models[0].read_bytes() != models[1].read_bytes()
    table = pd.read_csv(root / "results/table.csv").set_index("method")
    for method in ["zeroshot", "lp", "ft"]:
        assert table.loc[method, "runs"] == 2
        assert len(table.loc[method, "pretrained_sha256"].split(";")) == 2
        provs = [
            json.loads((root / f"results/embedded/{method}/seed{s}/provenance.json").read_text())
            for s in (0, 1)
        ]
        assert provs[0]["pretrained_sha256"] != provs[1]["pretrained_sha256"]
    rows = miniature.check([root / "results/embedded"], root / "data/embedded/tables")
    assert ("pretraining seeds >= 3", "2", False) in rows
