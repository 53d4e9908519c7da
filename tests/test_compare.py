"""The README's table claims, recomputed (benchmarks/compare.py): differences paired by the
pretrained model each run starts from, their signs, and how far a rebuilt table moved."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks/compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def write_runs(
    results: Path,
    method: str,
    runs: dict[str, tuple[float, float]],
    wise: dict[str, tuple[float, float]] | None = None,
):
    """``runs``: {pretrained hash: (ID, OOD average)}, one seed folder each, in the given order."""
    for seed, (pretrained, (id_acc, ood)) in enumerate(runs.items()):
        folder = results / method / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"test": id_acc, "avg_ood": ood}))
        (folder / "provenance.json").write_text(json.dumps({"pretrained_sha256": pretrained}))
        if wise:
            id_w, ood_w = wise[pretrained]
            (folder / "wise_metrics.json").write_text(
                json.dumps({"alpha": 0.5, "test": id_w, "avg_ood": ood_w})
            )


def test_runs_are_paired_by_pretrained_model_not_by_seed_folder(tmp_path):
    write_runs(tmp_path, "ft", {"aa": (0.80, 0.50), "bb": (0.90, 0.60)})
    # flyp's seed folders start from the two models in the other order
    write_runs(tmp_path, "flyp", {"bb": (0.91, 0.58), "aa": (0.82, 0.49)})
    assert compare.paired(tmp_path, "flyp", "ft", "test") == pytest.approx([2.0, 1.0])
    assert compare.paired(tmp_path, "flyp", "ft", "avg_ood") == pytest.approx([-1.0, -2.0])


def test_a_difference_is_called_by_its_sign_only_where_every_pair_agrees():
    assert compare.describe([1.0, 2.0]).endswith("all +)")
    assert compare.describe([-1.0, -0.5]).endswith("all -)")
    assert compare.describe([-1.0, 0.5]).endswith("mixed)")
    assert compare.describe([0.0, 0.0]).endswith("all 0)")
    assert compare.describe([1.0, 2.0, 3.0]).startswith(" +2.00 (+1.00 to +3.00")


def test_wise_rows_and_the_default_methods(tmp_path, capsys):
    write_runs(tmp_path, "zeroshot", {"aa": (0.6, 0.5)}, wise={"aa": (0.6, 0.5)})
    write_runs(tmp_path, "ft", {"aa": (0.8, 0.4)}, wise={"aa": (0.7, 0.5)})
    assert compare.main(["--results", str(tmp_path), "--base", "zeroshot"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split(" - ")[0] for line in lines[2:]]
    assert names == ["ft", "ft+wise"]  # zero-shot's own "ensemble" is itself: not listed
    assert "+10.00" in lines[3] and "+0.00" in lines[3]


def test_no_shared_pretrained_model_or_no_runs_is_one_line(tmp_path):
    write_runs(tmp_path, "ft", {"aa": (0.8, 0.5)})
    write_runs(tmp_path, "flyp", {"bb": (0.8, 0.5)})
    with pytest.raises(SystemExit, match="no run starts from the same pretrained model"):
        compare.paired(tmp_path, "flyp", "ft", "test")
    with pytest.raises(SystemExit, match="lpft: no seed"):
        compare.paired(tmp_path, "lpft", "ft", "test")


def test_a_rebuilt_table_is_measured_in_the_other_tables_std():
    old = {"ft": {"id": 0.80, "id_std": 0.01, "v2": 0.50, "v2_std": 0.02}}
    new = {"ft": {"id": 0.81, "id_std": 0.01, "v2": 0.45, "v2_std": 0.02}}
    lines = compare.against_lines(new, old)
    # v2 moved 5 points, 2.5 of the old std: the largest move, outside 2 std
    assert lines[1].split() == ["ft", "-5.00", "-2.50", "v2"]
    assert lines[-1].endswith("2.50 (outside 2 std)")
    assert compare.against_lines(old, old)[-1].endswith("0.00 (inside 2 std)")


def write_curve(
    results: Path, method: str, seed: int, points: list[tuple[float, float, float]], picked: float
):
    """``points``: (alpha, ID test, OOD average) of one run's weight-ensembling curve."""
    folder = results / method / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["alpha,val_metric,val_score,test,avg_ood"]
    rows += [f"{a},accuracy,0.5,{i},{o}" for a, i, o in points]
    (folder / "wise_curve.csv").write_text("\n".join(rows) + "\n")
    (folder / "wise_metrics.json").write_text(json.dumps({"alpha": picked}))


def test_wise_counts_where_each_curve_peaks_on_ood_leaving_out_lp(tmp_path, capsys):
    write_curve(tmp_path, "ft", 0, [(0.0, 0.6, 0.5), (0.5, 0.7, 0.6), (1.0, 0.8, 0.55)], 1.0)
    write_curve(tmp_path, "ft", 1, [(0.0, 0.6, 0.5), (0.5, 0.8, 0.5), (1.0, 0.7, 0.6)], 0.5)
    write_curve(tmp_path, "lp", 0, [(0.0, 0.6, 0.7), (1.0, 0.8, 0.5)], 1.0)
    write_curve(tmp_path, "zeroshot", 0, [(0.0, 0.6, 0.5)], 0.0)
    assert compare.wise_peaks(tmp_path / "ft/seed1/wise_curve.csv") == {
        "ood": 1.0,
        "id": 0.5,
        "picked": 0.5,
    }
    assert compare.main(["--results", str(tmp_path), "--wise"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["ft", "0.5", "1", "1", "0.5", "1", "0.5"]
    assert lines[3].split() == ["lp", "0", "1", "1"]  # listed, not counted
    assert not any(line.startswith("zeroshot") for line in lines)
    assert lines[-1].startswith("best OOD average at alpha 0.5: 1 of 2 curves, 1: 1 of 2 curves")
