"""The README's claims about the table, recomputed: differences between methods paired by
pretrained model, and how far a rebuilt table moved from another one.

    python benchmarks/compare.py                       # every method against ft and zero-shot
    python benchmarks/compare.py --base ft --method flyp --method flyp+wise
    git show REV:results/metrics.json > old.json
    python benchmarks/compare.py --against old.json     # how far this table moved from REV's
    python benchmarks/compare.py --wise                 # where each weight-ensembling curve peaks

**Paired differences.** Run i of every method starts from the i-th pretrained CLIP, so the
difference between two methods is taken run by run (paired by the pretrained model's hash that
each run's provenance records), which removes the pretraining draw that both share. Each line
gives the mean difference in points over the pairs, their range, and "all +" or "all -" where
every pair agrees in sign ("mixed" otherwise): the README states a difference only where the
pairs agree. "<method>+wise" is the method with weight ensembling at the alpha picked on ID-val.

**Weight-ensembling curves.** ``--wise`` reads every run's ``wise_curve.csv`` (alpha 0: the
zero-shot model, 1: the finetuned one) and gives, per method, the alpha of each run's best OOD
average, best ID test score and the alpha picked on ID-val, then how many curves peak on OOD at
each alpha, over the finetuned methods but the linear probe (whose ensemble mixes heads only).

**Against another table.** ``--against`` compares ``results/metrics.json`` (mean and std over the
runs of each method and test set) with another one, for instance the committed table rebuilt on
another machine: per method, the largest move over the test sets, in points and in units of the
other table's std over runs (within 2 std: inside its interval).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
ID, OOD = "test", "avg_ood"
WISE = "+wise"


@cache
def load_runs(results: Path, method: str) -> dict[str, dict[str, float]]:
    """{pretrained model hash: accuracies in points} for every seed run of ``method`` (read once
    per method: every pair and column it is part of reuses it)."""
    name, wise = method.removesuffix(WISE), method.endswith(WISE)
    found = {}
    for metrics in sorted((results / name).glob("seed*/metrics.json")):
        if wise:
            metrics = metrics.with_name("wise_metrics.json")
        prov = metrics.with_name("provenance.json")
        prov = json.loads(prov.read_text()) if prov.is_file() else {}
        key = prov.get("pretrained_sha256") or metrics.parent.name  # else: run i with run i
        found[key] = {
            k: 100 * v
            for k, v in json.loads(metrics.read_text()).items()
            if isinstance(v, float) and k != "alpha"
        }
    if not found:
        raise SystemExit(f"{results / name}: no seed*/metrics.json (has the main job run?)")
    return found


def paired(results: Path, method: str, base: str, column: str) -> list[float]:
    """``method`` minus ``base`` on ``column``, one value per pretrained model both start from."""
    runs, base_runs = load_runs(results, method), load_runs(results, base)
    shared = sorted(set(runs) & set(base_runs))
    if not shared:
        raise SystemExit(f"{method} and {base}: no run starts from the same pretrained model")
    return [runs[k][column] - base_runs[k][column] for k in shared]


def describe(diffs: list[float]) -> str:
    signs = (
        "all +"
        if all(d > 0 for d in diffs)
        else "all -"
        if all(d < 0 for d in diffs)
        else "all 0"
        if not any(diffs)
        else "mixed"
    )
    return f"{mean(diffs):+6.2f} ({min(diffs):+.2f} to {max(diffs):+.2f}, {signs})"


def paired_lines(results: Path, methods: list[str], bases: list[str]) -> list[str]:
    lines = [
        f"paired by pretrained model ({results}); points, mean (range, signs)",
        f"{'':26}{'ID':<34}OOD average",
    ]
    for base in bases:
        for method in methods:
            if method == base:
                continue
            id_diff, ood_diff = (
                describe(paired(results, method, base, column)) for column in (ID, OOD)
            )
            lines.append(f"{method + ' - ' + base:26}{id_diff:<34}{ood_diff}")
    return lines


def wise_peaks(curve: Path) -> dict[str, float]:
    """The alpha of a weight-ensembling curve's best OOD average and best ID test score (the
    first, smallest alpha on a tie) and the alpha picked on ID-val (``wise_metrics.json``)."""
    with curve.open() as f:
        rows = [
            {k: float(v) for k, v in row.items() if k != "val_metric"} for row in csv.DictReader(f)
        ]
    if not rows:
        raise SystemExit(f"{curve}: no alpha in the curve")
    picked = json.loads(curve.with_name("wise_metrics.json").read_text())["alpha"]
    return {
        "ood": max(rows, key=lambda r: r[OOD])["alpha"],
        "id": max(rows, key=lambda r: r[ID])["alpha"],
        "picked": picked,
    }


def wise_lines(results: Path, methods: list[str]) -> list[str]:
    """Per method and run, where its weight-ensembling curve peaks; then the OOD peaks counted
    over the methods but zero-shot and the linear probe."""
    lines = [
        f"weight-ensembling curves ({results}); alpha of each run's best OOD average, best "
        "ID test, picked on ID-val",
        f"{'method':22}{'best OOD':<18}{'best ID':<18}picked",
    ]
    counted = Counter()
    for method in methods:
        curves = sorted((results / method).glob("seed*/wise_curve.csv"))
        if method == "zeroshot" or not curves:
            continue
        peaks = [wise_peaks(c) for c in curves]
        ood, id_, picked = (" ".join(f"{p[k]:g}" for p in peaks) for k in ("ood", "id", "picked"))
        lines.append(f"{method:22}{ood:<18}{id_:<18}{picked}")
        if method != "lp":
            counted.update(p["ood"] for p in peaks)
    total = sum(counted.values())
    lines.append(
        "best OOD average at alpha "
        + ", ".join(f"{alpha:g}: {n} of {total} curves" for alpha, n in sorted(counted.items()))
        + " (every method but zero-shot and the linear probe)"
    )
    return lines


def against_lines(new: dict, old: dict) -> list[str]:
    """Per method, the largest move over the test sets from ``old`` to ``new``."""
    lines = [f"{'method':22}{'largest move':>14}  {'in old std':>10}  where"]
    worst = 0.0
    for method, row in new.items():
        if method not in old:
            lines.append(f"{method:22}{'(not in the other table)':>14}")
            continue
        moves = []
        for key, value in row.items():
            if key.endswith("_std") or key == "eff_robustness" or key not in old[method]:
                continue
            std = old[method].get(f"{key}_std") or 0.0
            diff = 100 * (value - old[method][key])
            in_std = diff / (100 * std) if std else (0.0 if diff == 0 else float("inf"))
            moves.append((abs(diff), in_std, key, diff))
        if not moves:
            continue
        _, in_std, key, diff = max(moves, key=lambda m: (abs(m[1]), m[0]))
        worst = max(worst, abs(in_std))
        lines.append(f"{method:22}{diff:+14.2f}  {in_std:+10.2f}  {key}")
    lines.append(
        f"largest move in units of the other table's std: {worst:.2f} "
        f"({'inside' if worst <= 2 else 'outside'} 2 std)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "embedded")
    parser.add_argument(
        "--method",
        action="append",
        help="(default: every method in the folder,"
        " and <method>+wise where it was ensembled with zero-shot)",
    )
    parser.add_argument("--base", action="append", help="(default: ft and zeroshot)")
    parser.add_argument("--metrics", type=Path, default=ROOT / "results" / "metrics.json")
    parser.add_argument("--against", type=Path, help="another metrics.json to compare with")
    parser.add_argument(
        "--wise",
        action="store_true",
        help="where each weight-ensembling curve peaks, instead of the pairs",
    )
    args = parser.parse_args(argv)
    if args.wise:
        methods = args.method or sorted(m.name for m in args.results.iterdir() if m.is_dir())
        print("\n".join(wise_lines(args.results, methods)))
        return 0
    if args.against:
        new, old = (json.loads(Path(p).read_text()) for p in (args.metrics, args.against))
        print("\n".join(against_lines(new, old)))
        return 0
    methods = args.method or [
        m.name + suffix
        for m in sorted(args.results.iterdir())
        if m.is_dir() and any(m.glob("seed*/metrics.json"))
        for suffix in ("", WISE)
        if not suffix or (m.name != "zeroshot" and any(m.glob("seed*/wise_metrics.json")))
    ]
    print("\n".join(paired_lines(args.results, methods, args.base or ["ft", "zeroshot"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
