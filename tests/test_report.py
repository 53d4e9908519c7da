"""The results table: mean and std over seeds, weight-ensembling rows, few-shot rows, effective
robustness and the figure, from hand-made result files."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from flyp.report import effective_robustness, fit_robustness_line, write_report

SETS = ["test", "v2", "sketch", "r", "a", "objectnet"]


def _write(root, method, run, metrics, wise=None, alpha=0.5):
    """A run's result files; ``run``: its folder under the method's (flyp.runs: "seed0",
    "k4/draw0"), whose last digit is its seed."""
    d = root / method / run
    d.mkdir(parents=True)
    full = {**metrics, "avg_ood": float(np.mean([metrics[s] for s in SETS[1:]]))}
    (d / "metrics.json").write_text(json.dumps(full))
    (d / "provenance.json").write_text(
        json.dumps(
            {
                "method": method,
                "best_epoch": 3,
                "seed": int(run[-1]),
                "checkpoint_sha256": "c" * 64,
                "data_hash": "d" * 64,
                "params_hash": "p" * 64,
                "val_metric": "accuracy",
                "select": "val_loss" if run.startswith("k") else "metric",
            }
        )
    )
    if wise is not None:
        w = {**wise, "avg_ood": float(np.mean([wise[s] for s in SETS[1:]]))}
        (d / "wise_metrics.json").write_text(json.dumps({"alpha": alpha, "val_score": 0.5, **w}))
        rows = [
            {
                "alpha": a,
                "val_score": 0.5,
                **{s: (1 - a) * 0.5 + a * full[s] for s in [*SETS, "avg_ood"]},
            }
            for a in (0.0, 0.5, 1.0)
        ]
        pd.DataFrame(rows).to_csv(d / "wise_curve.csv", index=False)


def test_report_aggregates_seeds_wise_and_fewshot(tmp_path):
    res = tmp_path / "results"
    for seed, acc in [(0, 0.6), (1, 0.8)]:
        _write(res, "zeroshot", f"seed{seed}", dict.fromkeys(SETS, 0.5))
        _write(
            res,
            "ft",
            f"seed{seed}",
            {**dict.fromkeys(SETS, acc - 0.2), "test": acc},
            wise=dict.fromkeys(SETS, 0.7),
        )
        _write(
            res,
            "lp",
            f"seed{seed}",
            {**dict.fromkeys(SETS, 0.45), "test": 0.62 + seed / 100},
            wise=dict.fromkeys(SETS, 0.6),
        )
    _write(res, "ft", "k4/draw0", dict.fromkeys(SETS, 0.3))
    _write(res, "ft", "k4/draw1", dict.fromkeys(SETS, 0.5))
    df = write_report(
        "embedded",
        res,
        methods=["zeroshot", "ft", "lp"],
        seeds=[0, 1],
        wise_methods=["ft", "lp"],
        fewshot_methods=["ft"],
        shots=[4],
        draws=2,
        table=tmp_path / "table.csv",
        metrics_out=tmp_path / "metrics.json",
        plot_out=tmp_path / "plot.png",
        plot_csv=tmp_path / "plot.csv",
    )
    assert list(df["method"]) == ["zeroshot", "ft", "lp", "ft+wise", "lp+wise", "ft@4shot"]
    ft = df.set_index("method").loc["ft"]
    assert ft["id"] == pytest.approx(70.0) and ft["id_std"] == pytest.approx(14.14, abs=0.01)
    assert ft["seed"] == "0;1" and ft["runs"] == 2
    assert df.set_index("method").loc["ft+wise", "alpha"] == "0.5;0.5"
    assert df.set_index("method").loc["ft@4shot", "id"] == pytest.approx(40.0)
    # what picked each row's epoch: the ID metric on ID-val, or the few-shot val loss
    assert df.set_index("method")["selected_on"].to_dict() == {
        **dict.fromkeys(["zeroshot", "ft", "lp", "ft+wise", "lp+wise"], "val_accuracy"),
        "ft@4shot": "val_loss",
    }
    nested = json.loads((tmp_path / "metrics.json").read_text())
    assert nested["ft"]["id"] == pytest.approx(0.7)
    assert "eff_robustness" in nested["ft+wise"]
    assert (tmp_path / "plot.png").stat().st_size > 5000
    assert set(pd.read_csv(tmp_path / "plot.csv")["method"]) == {"ft", "lp"}
    saved = pd.read_csv(tmp_path / "table.csv")
    assert list(saved["method"]) == list(df["method"])


def test_effective_robustness_is_distance_above_the_logit_line():
    ids = np.array([0.5, 0.6, 0.7, 0.8])
    logit = np.log(ids / (1 - ids))
    ood = 1 / (1 + np.exp(-(0.8 * logit - 0.3)))
    line = fit_robustness_line(list(zip(ids, ood, strict=True)))
    assert line == pytest.approx((0.8, -0.3), abs=1e-6)
    assert effective_robustness(
        line, 0.65, 1 / (1 + np.exp(-(0.8 * np.log(0.65 / 0.35) - 0.3)))
    ) == pytest.approx(0.0, abs=1e-9)
    assert effective_robustness(line, 0.65, 0.9) > 0.3
    assert fit_robustness_line([(0.5, 0.4), (0.5, 0.3)]) is None  # one ID value: no line


def _fewshot_report(tmp_path, **kw):
    res = tmp_path / "results"
    for seed, acc in [(0, 0.6), (1, 0.8)]:
        _write(res, "ft", f"seed{seed}", {**dict.fromkeys(SETS, 0.5), "test": acc})
    for draw, acc in enumerate([0.3, 0.5, 0.7]):
        _write(res, "ft", f"k4/draw{draw}", dict.fromkeys(SETS, acc))
    df = write_report(
        "embedded",
        res,
        methods=["ft"],
        seeds=[0, 1],
        wise_methods=[],
        fewshot_methods=["ft"],
        shots=[4],
        draws=3,
        table=tmp_path / "table.csv",
        metrics_out=tmp_path / "metrics.json",
        markdown=tmp_path / "table.md",
        **kw,
    )
    return df.set_index("method"), json.loads((tmp_path / "metrics.json").read_text())


def test_the_std_over_draws_is_the_sample_std_unless_asked_for_numpys(tmp_path):
    """By default every std is the sample std (ddof 1) and the table says nothing more; with
    ``fewshot_std_ddof=0`` (the FLYP reference's np.std) the few-shot rows' std is numpy's, the
    seeds' rows keep the sample std, and a std_ddof column (table.csv, table.md) and key
    (metrics.json) say which each row's is."""
    draws = np.array([0.3, 0.5, 0.7])
    df, nested = _fewshot_report(tmp_path / "default")
    assert df.loc["ft@4shot", "id_std"] == pytest.approx(100 * draws.std(ddof=1), abs=0.01)
    assert "std_ddof" not in df.columns and "std_ddof" not in nested["ft@4shot"]
    md = (tmp_path / "default/table.md").read_text()
    assert "Percent; `_std` over seeds (or few-shot draws). Made by" in md

    df, nested = _fewshot_report(tmp_path / "numpy", fewshot_std_ddof=0)
    assert df.loc["ft@4shot", "id_std"] == pytest.approx(100 * np.std(draws), abs=0.01)  # 16.33
    assert df.loc["ft@4shot", "id_std"] != pytest.approx(100 * draws.std(ddof=1), abs=0.01)
    assert df.loc["ft", "id_std"] == pytest.approx(14.14, abs=0.01)  # over seeds: ddof 1
    assert nested["ft@4shot"]["id_std"] == pytest.approx(np.std(draws), abs=1e-6)
    assert df["std_ddof"].to_dict() == {"ft": 1, "ft@4shot": 0}
    assert {k: v["std_ddof"] for k, v in nested.items()} == {"ft": 1, "ft@4shot": 0}
    saved = pd.read_csv(tmp_path / "numpy/table.csv")
    assert list(saved.columns).index("std_ddof") == list(saved.columns).index("selected_on") - 1
    md = (tmp_path / "numpy/table.md").read_text()
    assert "`std_ddof` column's delta degrees of freedom" in md
    assert re.search(r"\|\s*std_ddof\s*\|", md.splitlines()[4])  # the header row
