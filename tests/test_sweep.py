"""The per-method sweep (flyp/sweep.py): the grid a preset names, the jobs it adds to the DAG (the
first seed only), the pick on ID-val (never on a test set), the full runs at the picked setting,
the table's picked column and figure; and with no grid, the DAG as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from flyp.cli import main
from flyp.io import UserError
from flyp.models import save_checkpoint
from flyp.report import sweep_lines, write_report
from flyp.runs import grid_run
from flyp.sweep import describe, grid_points, is_swept, point_name, select, trained
from flyp.workflow.config import load_params, training_settings
from tests.conftest import ROOT, set_embedded, training_methods
from tests.test_report import SETS, _write

SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"


@pytest.fixture()
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_grid_points_are_the_product_in_the_order_written():
    grid = {"lr": [1e-5, 1e-4], "lambda": [0.1, 0.01]}
    assert grid_points(grid) == [
        {"lr": 1e-5, "lambda": 0.1},
        {"lr": 1e-5, "lambda": 0.01},
        {"lr": 1e-4, "lambda": 0.1},
        {"lr": 1e-4, "lambda": 0.01},
    ]
    assert point_name(grid_points(grid)[1]) == "lr1e-05-lambda0.01"
    assert grid_run("l2sp", "lr1e-05-lambda0.01", 0) == "l2sp/sweep/lr1e-05-lambda0.01/seed0"
    assert is_swept({"lr": [1e-5, 1e-4]}) and not is_swept({"lr": [1e-5]}) and not is_swept({})


def test_the_real_presets_keep_the_papers_values_and_the_embedded_one_sweeps_lr(params):
    """The real presets' default is the paper's setting (the sweep one parameter away); the
    embedded benchmark picks every finetuned method's lr on ID-val, from the same grid."""
    for name in params["presets"]:
        params["benchmark"] = name
        run = load_params(params, SCHEMA)
        if name != "embedded":
            assert run["sweep"] == {}, name
            continue
        # every grid is of a method that trains (a method without one trains as the preset says)
        assert set(run["sweep"]) <= training_methods(run["methods"])
        assert all(is_swept(grid) and list(grid)[0] == "lr" for grid in run["sweep"].values())
        # L2-SP also picks its own option, the weight of its penalty
        assert {m: list(grid)[1:] for m, grid in run["sweep"].items() if len(grid) > 1} == {
            "l2sp": ["lambda"]
        }
        # one grid for all; LP-FT trains at its grid's lr times its lr_scale, so its grid goes
        # further up, for the lrs it trains at to cover the shared grid and two below it
        lrs = {m: grid["lr"] for m, grid in run["sweep"].items()}
        scale = run["method_options"]["lpft"]["lr_scale"]
        lpft, shared = lrs.pop("lpft"), lrs["ft"]
        assert lpft[: len(shared)] == shared
        trained = [
            training_settings(run, "lpft", seed=0, classes=12, point={"lr": lr})["lr"]
            for lr in lpft
        ]
        assert trained == pytest.approx([scale * lr for lr in lpft])
        assert set(shared) < set(trained) and min(trained) < min(shared)
        assert all(lr == lrs["ft"] for lr in lrs.values())


def test_a_top_level_key_fixes_that_setting_for_every_method(params):
    """`dvc exp run -S lr=1e-5` trains every method at 1e-5: no grid varies lr any more."""
    params["presets"]["embedded"]["sweep"] = {
        "flyp": {"lr": [1e-5, 1e-4]},
        "l2sp": {"lr": [1e-5, 1e-4], "lambda": [0.01, 0.1]},
    }
    params["lr"] = 1e-5
    run = load_params(params, SCHEMA)
    assert run["sweep"] == {"l2sp": {"lambda": [0.01, 0.1]}}
    for method in ("flyp", "l2sp", "ft"):
        assert training_settings(run, method, seed=0, classes=12)["lr"] == 1e-5


def test_dvc_style_string_values_of_a_grid_are_numbers(params):
    # `dvc exp run -S '+presets.embedded.sweep.flyp.lr=[1e-5,1e-4]'` writes 1e-05 (a YAML string)
    params["presets"]["embedded"]["sweep"] = {
        "flyp": {"lr": ["1e-05", 0.0001]},
        "l2sp": {"lambda": ["0.01", 0.1]},
    }
    run = load_params(params, SCHEMA)
    assert run["sweep"] == {"flyp": {"lr": [1e-5, 1e-4]}, "l2sp": {"lambda": [0.01, 0.1]}}


@pytest.mark.parametrize(
    "sweep, expected",
    [
        ({"nonsense": {"lr": [1e-5, 1e-4]}}, "sweep.nonsense: unknown method 'nonsense'"),
        ({"flyp": {"lambda": [0.1, 1.0]}}, "sweep.flyp.lambda: not a setting of method flyp"),
        ({"flyp": {"lr": []}}, "sweep.flyp.lr: [] should be non-empty"),
        ({"flyp": {}}, "sweep.flyp: {} should be non-empty"),
        ({"flyp": {"lr": [1e-4, 1e-4]}}, "sweep.flyp.lr: [0.0001, 0.0001] has non-unique"),
        ({"flyp": {"lr": [-1]}}, "sweep.flyp.lr.0"),
        ({"flyp": {"lr": 1e-4}}, "sweep.flyp.lr: 0.0001 is not of type 'array'"),
        ({"l2sp": {"lambda": [-1, 1]}}, "sweep.l2sp.lambda: option 'lambda': expected float >= 0"),
        ({"lp": {"lr": [1e-4, 1e-3]}}, "sweep.lp.lr: method lp does not train"),
    ],
)
def test_a_bad_grid_is_one_line_naming_the_key(params, sweep, expected):
    params["presets"]["embedded"]["sweep"] = sweep
    with pytest.raises(UserError) as err:
        load_params(params, SCHEMA)
    message = str(err.value)
    assert "\n" not in message and message.startswith("params.yaml: presets.embedded.")
    assert expected in message


def _checkpoint(path, val_score, epoch=1, config=None):
    """A checkpoint that records its ID-val score and the settings it trained at."""
    info = {"val_metric": "accuracy", "best_val_score": val_score, "best_epoch": epoch}
    save_checkpoint(path, "RN50", {"w": torch.zeros(2)}, None, {**info, "config": config or {}})
    return path


def _poisoned_test_metrics(root, folder, score):
    """A test-set result for a grid run that says the opposite of its ID-val score."""
    results = root / "results" / folder
    results.mkdir(parents=True, exist_ok=True)
    (results / "metrics.json").write_text(json.dumps({s: score for s in [*SETS, "avg_ood"]}))


def test_the_best_id_val_score_wins_and_the_test_sets_are_not_read(tmp_path):
    grid = {"lr": [1e-5, 1e-4, 1e-3]}
    val = [0.61, 0.74, 0.52]
    paths = []
    for point, score in zip(grid_points(grid), val, strict=True):
        folder = grid_run("flyp", point_name(point), 0)
        run = tmp_path / "models" / folder
        run.mkdir(parents=True)
        paths.append(_checkpoint(run / "best.safetensors", score, config=point))
        _poisoned_test_metrics(tmp_path, folder, 1 - score)  # the test sets would pick lr 1e-3
    out = tmp_path / "sweep.json"
    done = CliRunner().invoke(
        main,
        [
            "sweep-select",
            "--method",
            "flyp",
            "--grid",
            json.dumps(grid),
            "--out",
            str(out),
            *map(str, paths),
        ],
    )
    assert done.exit_code == 0, done.output
    picked = json.loads(out.read_text())
    assert picked["picked"] == {"lr": 1e-4} and picked["picked_point"] == "lr0.0001"
    assert picked["trained"] == {"lr": 1e-4}  # what the picked run's checkpoint recorded
    assert picked["val_score"] == 0.74
    assert [r["val_score"] for r in picked["runs"]] == val
    for metrics in tmp_path.glob("results/**/metrics.json"):
        metrics.unlink()  # and with no test result anywhere, the same pick
    assert select(grid_points(grid), paths)["picked"] == {"lr": 1e-4}


def test_a_tie_goes_to_the_first_point_and_no_score_is_an_error(tmp_path):
    points = grid_points({"lr": [1e-5, 1e-4, 1e-3]})
    paths = [
        _checkpoint(tmp_path / f"{i}.safetensors", s, config=p)
        for i, (s, p) in enumerate(zip([0.5, float("nan"), 0.5], points, strict=True))
    ]
    assert select(points, paths)["picked"] == {"lr": 1e-5}
    paths = [
        _checkpoint(tmp_path / f"{i}.safetensors", None, config=p) for i, p in enumerate(points)
    ]
    with pytest.raises(UserError, match="no ID-val score"):
        select(points, paths)


def test_the_table_names_the_picked_setting_and_the_figure_shows_the_grid(tmp_path):
    res = tmp_path / "results"
    for seed in (0, 1):
        _write(res, "zeroshot", f"seed{seed}", dict.fromkeys(SETS, 0.5))
        _write(res, "ft", f"seed{seed}", dict.fromkeys(SETS, 0.6), wise=dict.fromkeys(SETS, 0.7))
    # a grid of the lr before the method's lr_scale (0.1): the runs trained at a tenth of it
    runs = [
        {
            "point": point_name({"lr": lr}),
            "setting": {"lr": lr},
            "trained": {"lr": lr / 10},
            "val_metric": "accuracy",
            "val_score": s,
            "best_epoch": 2,
        }
        for lr, s in [(1e-4, 0.6), (1e-3, 0.7)]
    ]
    (res / "ft" / "sweep.json").write_text(
        json.dumps(
            {
                "method": "ft",
                "grid": {"lr": [1e-4, 1e-3]},
                "picked": {"lr": 1e-3},
                "picked_point": runs[1]["point"],
                "trained": {"lr": 1e-4},
                "val_metric": "accuracy",
                "val_score": 0.7,
                "runs": runs,
            }
        )
    )
    kwargs = dict(
        methods=["zeroshot", "ft"],
        seeds=[0, 1],
        wise_methods=["ft"],
        metrics_out=tmp_path / "m.json",
    )
    plain = write_report("embedded", res, table=tmp_path / "plain.csv", **kwargs)
    assert "picked" not in plain.columns  # no sweep: the table as it was
    df = write_report(
        "embedded",
        res,
        table=tmp_path / "t.csv",
        sweep_methods=["ft"],
        sweep_plot=tmp_path / "sweep.png",
        sweep_csv=tmp_path / "sweep.csv",
        **kwargs,
    )
    assert dict(zip(df["method"], df["picked"], strict=True)) == {
        "zeroshot": "",
        "ft": "lr=0.0001",
        "ft+wise": "lr=0.0001",
    }
    assert df.drop(columns="picked").equals(plain)
    assert (tmp_path / "sweep.png").stat().st_size > 5_000
    curve = pd.read_csv(tmp_path / "sweep.csv")
    assert list(curve["setting"]) == ["lr=1e-05", "lr=0.0001"]
    assert list(curve["val_score"]) == [60.0, 70.0] and list(curve["picked"]) == [False, True]


def test_the_figure_draws_a_two_key_grid_as_one_line_per_value_of_the_second_key():
    grid = {"lambda": [0.1, 0.01], "lr": [1e-4, 1e-3, 1e-2]}
    points = grid_points(grid)
    runs = [
        {"point": point_name(p), "trained": p, "val_score": p["lr"] * 10 + p["lambda"]}
        for p in points
    ]
    picked = next(r["point"] for r in runs if r["trained"] == {"lambda": 0.01, "lr": 1e-3})
    lines = sweep_lines({"grid": grid, "runs": runs, "picked_point": picked})
    # lr along x wherever the grid has it, whatever its key order; a line per lambda
    assert [label for label, *_ in lines] == ["lambda=0.1", "lambda=0.01"]
    for label, xs, ys, flags in lines:
        lam = float(label.split("=")[1])
        assert xs == [1e-4, 1e-3, 1e-2]
        assert ys == pytest.approx([x * 10 + lam for x in xs])
        assert flags == [label == "lambda=0.01" and x == 1e-3 for x in xs]
    one_key = sweep_lines(
        {
            "grid": {"lr": [1e-5, 1e-4]},
            "picked_point": runs[0]["point"],
            "runs": [dict(runs[0], trained={"lr": 1e-5}), dict(runs[1], trained={"lr": 1e-4})],
        }
    )
    assert one_key == [
        ("", [1e-5, 1e-4], [runs[0]["val_score"], runs[1]["val_score"]], [True, False])
    ]


# --- the DAG (`snakemake -n`) ---------------------------------------------------------------


def _project(tmp_path, **change):
    """A copy of the workflow, its params.yaml changed (``sweep``, ``pretrain_seeds``: the
    embedded preset's; ``sweep={}``: none; ``pretrain_seeds``: a list, or one seed as ``seed``)."""
    root = tmp_path / "project"
    root.mkdir(parents=True)
    shutil.copy(ROOT / "Snakefile", root)
    shutil.copytree(ROOT / "workflow", root / "workflow")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sweep = change.pop("sweep", None)
    fewshot = change.pop("fewshot", True)
    pretrain_seeds = change.pop("pretrain_seeds", None)
    params.update(change)
    set_embedded(params, sweep=sweep, pretrain_seeds=pretrain_seeds)
    if not fewshot:
        del params["presets"]["embedded"]["fewshot"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def dry_run(root) -> set[str]:
    """Every job `snakemake -n -p --forceall` lists: its rule, files, wildcards and command (job
    ids, times and the order dropped)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-p",
            "--forceall",
            "--cores",
            "2",
            "results/table.csv",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = set()
    for block in re.split(
        r"^\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\]$", done.stdout, flags=re.M
    )[1:]:
        lines = [
            line
            for line in block.strip().splitlines()
            if line.strip()
            and not re.match(r"\s+(jobid|reason):", line)
            and not line.startswith(("Job stats", "This was", "Would remove", "DAG of"))
        ]
        if lines and re.match(r"(local)?(rule|checkpoint) ", lines[0]):
            jobs.add("\n".join(lines))
    return jobs


def _jobs_of(jobs, rule):
    return {j for j in jobs if j.split(":")[0].split()[-1] == rule}


def test_with_no_grid_the_main_job_is_unchanged(tmp_path, params):
    """No grid, or a grid of one point at the preset's value: the same jobs and commands, and
    none of the sweep's."""
    default = dry_run(_project(tmp_path / "a", sweep={}, pretrain_seeds=0))
    lr = params["presets"]["embedded"]["finetune"]["lr"]
    assert (
        dry_run(_project(tmp_path / "b", sweep={"flyp": {"lr": [lr]}}, pretrain_seeds=0)) == default
    )
    text = "\n".join(default)
    assert "sweep" not in text and "point=" not in text
    assert re.search(r"wildcards: method=\w+, seed=\d+", text)
    assert re.search(r"wildcards: method=\w+, shots=\d+, draw=\d+", text)


def test_a_two_point_grid_adds_its_runs_for_the_first_seed_only(tmp_path):
    smoke = dict(
        scale="smoke",
        seeds=[0, 1],
        methods=["zeroshot", "lp", "lpft", "flyp"],
        alphas=[0.0, 0.5, 1.0],
        fewshot=False,
        pretrain_seeds=0,
    )
    off = dry_run(_project(tmp_path / "off", sweep={}, **smoke))
    on = dry_run(
        _project(
            tmp_path / "on", sweep={"flyp": {"lr": [1e-5, 1e-3]}, "lpft": {"lr": [3e-5]}}, **smoke
        )
    )
    grid = _jobs_of(on, "finetune_sweep")
    assert {re.search(r"point=(\S+), seed=0", j)[1] for j in grid} == {"lr1e-05", "lr0.001"}
    for job in grid:  # the first seed, at the point's lr; never evaluated on a test set
        lr = re.search(r"point=lr(\S+), seed=0", job)[1]
        assert "--method flyp" in job and f"--lr {lr} " in job and "--seed 0 " in job
        assert f"--out models/embedded/flyp/sweep/lr{lr}/seed0/best.safetensors" in job
    assert not any("results/embedded/flyp/sweep/" in j for j in on)
    (select,) = _jobs_of(on, "sweep_select")
    assert "--out results/embedded/flyp/sweep.json" in select
    assert "models/embedded/flyp/sweep/lr1e-05/seed0/best.safetensors" in select
    # flyp's full runs wait for the pick (the first seed's is the picked grid run, copied)
    (reuse,) = _jobs_of(on, "reuse_sweep_run")
    assert "output: models/embedded/flyp/seed0/best.safetensors" in reuse
    (seed1,) = [j for j in _jobs_of(on, "finetune") if "method=flyp, seed=1" in j]
    assert "<TBD>" in seed1
    # lpft's one-point grid is its setting (no sweep runs): lr 3e-5 x its lr_scale (0.1) for
    # every seed
    lpft = [j for j in _jobs_of(on, "finetune") if "method=lpft" in j]
    assert len(lpft) == 2 and all("--lr 3e-06 " in j for j in lpft)
    # and nothing else changed
    changed = {j for j in off if "method=flyp, seed=" in j and "rule finetune" in j}
    changed |= {j for j in off if "method=lpft" in j and "rule finetune" in j}
    changed |= _jobs_of(off, "report")
    assert len(changed) == 5 and off - changed <= on
    assert len(on - off) == len(grid) + 1 + 1 + 1 + 2 + 1  # select, reuse, seed 1, lpft, report


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-seeds-sweep")
def test_the_sweep_end_to_end_on_the_smoke_scale(smoke_seeds_and_sweep):
    """The smoke world with a 2-point lr grid for FLYP: the pick is the grid run with the best
    ID-val score, the full runs train at it, the table and the figure say so."""
    root, env, done = smoke_seeds_and_sweep
    selection = json.loads((root / "results/embedded/flyp/sweep.json").read_text())
    scores = {r["point"]: r["val_score"] for r in selection["runs"]}
    assert set(scores) == {"lr1e-05", "lr0.001"}
    assert selection["picked_point"] == max(scores, key=scores.get)
    lr = selection["picked"]["lr"]
    assert selection["trained"] == {"lr": lr}  # FLYP has no lr_scale
    models = root / "models/embedded"
    assert f"--method flyp --epochs 2 --lr {lr:g} " in done.stderr  # the seed-1 run's command
    picked = models / grid_run("flyp", selection["picked_point"], 0)
    picked_log = pd.read_csv(picked / "train_log.csv")
    assert list(pd.read_csv(models / "flyp/seed1/train_log.csv")["lr"]) == list(picked_log["lr"])
    assert (models / "flyp/seed0/best.safetensors").read_bytes() == (
        picked / "best.safetensors"
    ).read_bytes()
    assert not (root / "results/embedded/flyp/sweep").exists()  # no test-set evaluation
    table = pd.read_csv(root / "results/table.csv", keep_default_na=False)
    assert dict(zip(table["method"], table["picked"], strict=True)) == {
        "zeroshot": "",
        "lp": "",
        "ft": "",
        "flyp": f"lr={lr:g}",
        "lp+wise": "",
        "ft+wise": "",
        "flyp+wise": f"lr={lr:g}",
    }
    assert (root / "results/plots/sweep.png").is_file()
    again = subprocess.run(
        ["snakemake", "-n", "--cores", "2", "results/table.csv"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Nothing to be done" in again.stdout + again.stderr


def test_an_option_is_read_back_from_a_checkpoint_as_a_number():
    # A checkpoint holds a method's options as its command line gave them: text. The picked
    # setting the table shows must format it as a number (L2-SP's lambda on its grid).
    info = {"config": {"lr": 0.003, "options": {"lambda": "0.001"}}}
    picked = trained(info, {"lr": 0.003, "lambda": 0.001})
    assert picked == {"lr": 0.003, "lambda": 0.001}
    assert describe(picked) == "lr=0.003;lambda=0.001"
