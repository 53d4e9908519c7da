"""The fair-miniature check (benchmarks/miniature.py): each criterion of a fair miniature
(zero-shot ID accuracy, ft's gain over it, each OOD set's zero-shot accuracy, the sampling
standard error, the number of pretraining seeds), measured on a run's zero-shot and ft results and
on its tables' sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("miniature", ROOT / "benchmarks/miniature.py")
miniature = importlib.util.module_from_spec(spec)
spec.loader.exec_module(miniature)

OOD = ["v2", "sketch", "r", "a", "objectnet"]


def write_world(
    root: Path,
    sizes: dict[str, int],
    runs: dict[str, list[dict[str, float]]],
    pretrained: list[str] | None = None,
):
    """Tables of the given row counts, and metrics.json files for each seed of each method (and
    provenance.json naming the pretrained model of seed i, ``pretrained[i]``, when given)."""
    tables = root / "tables"
    tables.mkdir(parents=True)
    for name, n in sizes.items():
        pd.DataFrame({"label": [0] * n}).to_parquet(tables / f"{name}.parquet")
    for method, seeds in runs.items():
        for seed, acc in enumerate(seeds):
            folder = root / "results" / method / f"seed{seed}"
            folder.mkdir(parents=True)
            avg = sum(acc[name] for name in OOD) / len(OOD)
            (folder / "metrics.json").write_text(json.dumps({**acc, "avg_ood": avg}))
            if pretrained:
                (folder / "provenance.json").write_text(
                    json.dumps({"pretrained_sha256": pretrained[seed]})
                )
    return tables


def accuracies(test: float, ood: float = 0.5, **sets: float) -> dict[str, float]:
    return {"test": test, **dict.fromkeys(OOD, ood), **sets}


def write_regime(results: Path, scores: dict[float, float], curves: list[list[float]]):
    """ft's sweep.json (ID-val score per lr in points, the best picked) and one wise_curve.csv
    per seed (the OOD average at alphas 0, 0.5, 1)."""
    picked = max(scores, key=scores.get)
    runs = [{"setting": {"lr": lr}, "val_score": v / 100} for lr, v in scores.items()]
    (results / "ft").mkdir(parents=True, exist_ok=True)
    (results / "ft/sweep.json").write_text(json.dumps({"picked": {"lr": picked}, "runs": runs}))
    for seed, curve in enumerate(curves):
        folder = results / "ft" / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["alpha,test,avg_ood"] + [
            f"{alpha},0.7,{ood}" for alpha, ood in zip([0, 0.5, 1], curve, strict=True)
        ]
        (folder / "wise_curve.csv").write_text("\n".join(lines) + "\n")


INSIDE = {1e-5: 80.0, 1e-4: 84.0, 1e-3: 82.5}  # picks 1e-4; the top lr 1.5 points worse


@pytest.fixture
def sizes():
    return {"test": 10000, "train": 100, **dict.fromkeys(OOD, 2000)}


def verdicts(rows) -> dict[str, tuple[str, bool]]:
    return {criterion: (value, holds) for criterion, value, holds in rows}


def test_a_world_that_meets_every_criterion(tmp_path, sizes):
    tables = write_world(
        tmp_path,
        sizes,
        {
            "zeroshot": [accuracies(0.6)] * 3,
            "ft": [accuracies(0.75, sketch=0.45), accuracies(0.73, sketch=0.45)],
        },
    )
    write_regime(tmp_path / "results", INSIDE, [[0.5, 0.55, 0.52]] * 2)
    rows = miniature.check([tmp_path / "results"], tables, pretrain_seeds=3)
    assert all(holds for _, _, holds in rows), rows
    got = verdicts(rows)
    # p = 0.6 over 10,000 images: sqrt(0.24 / 10000) = 0.49 point; OOD: sqrt(5 * 0.25 / 2000) / 5
    assert got["zero-shot standard error <= 0.5 point, ID / OOD average"][0].startswith(
        "0.49 / 0.50"
    )
    assert got["ft gains >= 10 points ID over zero-shot"][0].startswith("+14.0")


def test_each_criterion_fails_on_its_own(tmp_path, sizes):
    sizes["test"] = 1000  # standard error 1.5 points
    zeroshot = [{**accuracies(0.8), "a": 0.2}]  # ID above 75, `a` below 25
    tables = write_world(tmp_path, sizes, {"zeroshot": zeroshot, "ft": [accuracies(0.85)]})
    got = verdicts(miniature.check([tmp_path / "results"], tables, pretrain_seeds=1))
    failed = {criterion for criterion, (_, holds) in got.items() if not holds}
    assert failed == {
        "zero-shot ID accuracy in [50, 75]",
        "ft gains >= 10 points ID over zero-shot",
        "zero-shot a accuracy in [25, 85]",
        "zero-shot standard error <= 0.5 point, ID / OOD average",
        "ft standard error <= 0.5 point, ID / OOD average",
        "pretraining seeds >= 3",
        # no sweep.json, no weight-ensembling curve, and ft only 5 points above zero-shot
        "small lrs win: each pick strictly inside its grid, top lr >= 1 worse",
        "weight ensembling helps: an alpha in (0, 1) beats both ends on OOD, every ft run",
        "ft distorts: >= 10 above zero-shot ID, below it on an OOD set, every seed",
    }


@pytest.mark.parametrize(
    "scores, curves, fails",
    [
        (INSIDE, [[0.5, 0.55, 0.52]], set()),
        ({1e-5: 80.0, 1e-4: 82.0, 1e-3: 84.0}, [[0.5, 0.55, 0.52]], {"small lrs win"}),  # top lr
        ({1e-5: 80.0, 1e-4: 84.0, 1e-3: 83.5}, [[0.5, 0.55, 0.52]], {"small lrs win"}),  # -0.5 only
        (INSIDE, [[0.5, 0.55, 0.52], [0.5, 0.52, 0.56]], {"weight ensembling helps"}),  # alpha 1
    ],
)
def test_the_regime_criteria(tmp_path, sizes, scores, curves, fails):
    runs = {
        "zeroshot": [accuracies(0.6)] * len(curves),
        "ft": [accuracies(0.75, sketch=0.45)] * len(curves),
    }
    tables = write_world(tmp_path, sizes, runs)
    write_regime(tmp_path / "results", scores, curves)
    got = verdicts(miniature.check([tmp_path / "results"], tables, pretrain_seeds=3))
    failed = {c.split(":")[0] for c, (_, holds) in got.items() if not holds}
    assert failed == fails, got


def test_runs_of_several_pretraining_seeds_are_pooled(tmp_path, sizes):
    for seed, zs in enumerate([0.55, 0.65]):
        write_world(
            tmp_path / f"p{seed}",
            sizes,
            {"zeroshot": [accuracies(zs)], "ft": [accuracies(zs + 0.12)]},
        )
    results = [tmp_path / "p0/results", tmp_path / "p1/results"]
    got = verdicts(miniature.check(results, tmp_path / "p0/tables", pretrain_seeds=2))
    assert got["zero-shot ID accuracy in [50, 75]"] == ("60.0 (55.0-65.0, 2 runs)", True)


def test_a_missing_table_or_result_is_one_line(tmp_path, sizes):
    del sizes["objectnet"]
    tables = write_world(tmp_path, sizes, {"zeroshot": [accuracies(0.6)], "ft": [accuracies(0.7)]})
    with pytest.raises(SystemExit, match="no table for objectnet"):
        miniature.check([tmp_path / "results"], tables, pretrain_seeds=3)
    with pytest.raises(SystemExit, match="no zeroshot/seed"):
        miniature.check([tmp_path / "elsewhere"], tables, pretrain_seeds=3)


def test_the_pretrained_models_are_counted_from_the_runs_provenance(tmp_path, sizes):
    zeroshot = [accuracies(0.6), accuracies(0.62), accuracies(0.58)]
    ft = [accuracies(0.75)] * 3
    tables = write_world(
        tmp_path / "three", sizes, {"zeroshot": zeroshot, "ft": ft}, pretrained=["aa", "bb", "cc"]
    )
    got = verdicts(miniature.check([tmp_path / "three/results"], tables))
    assert got["pretraining seeds >= 3"] == ("3", True)
    write_world(
        tmp_path / "one", sizes, {"zeroshot": zeroshot, "ft": ft}, pretrained=["aa", "aa", "aa"]
    )
    got = verdicts(miniature.check([tmp_path / "one/results"], tables))
    assert got["pretraining seeds >= 3"] == ("1", False)
