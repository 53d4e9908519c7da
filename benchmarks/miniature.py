"""Check the embedded benchmark against the criteria of a fair miniature.

The criteria look only at zero-shot and standard finetuning (``ft``) and at the test sets' sizes,
never at which method wins:

- zero-shot ID accuracy between 50% and 75%;
- standard finetuning gains at least 10 points ID over zero-shot;
- every OOD set's zero-shot accuracy between 25% and 85%;
- a sampling standard error of at most 0.5 point on ID and on the OOD average, for both;
- several pretraining seeds (at least 3), each its own pretrained CLIP.

and three about CLIP's regime, which a miniature whose pretrained model is only an initialisation
fails:

- small learning rates win: every swept method's ID-val pick (``<method>/sweep.json``, seed 0's
  grid) is an lr strictly inside its grid, and the grid's largest lr is at least 1 point worse on
  ID-val than the pick (for L2-SP, each lr's best over its other keys);
- weight ensembling helps out of distribution: on every ft run, some alpha strictly between 0 and
  1 has a higher OOD average than both ends of its curve (``ft/seed*/wise_curve.csv``);
- finetuning distorts: on every pretraining seed, ft is at least 10 points above zero-shot on ID
  and below it on at least one OOD set (runs paired by pretrained model).

    python benchmarks/miniature.py                        # the main job's results
    python benchmarks/miniature.py --results DIR [--results DIR ...] --data TABLES

Each ``--results`` directory holds ``zeroshot/seed*/metrics.json`` and ``ft/seed*/metrics.json``
(one directory per pretraining seed; the main job's ``results/embedded`` by default). Prints each
criterion with its measured value (mean over the runs, and the range where there are several)
and whether it holds; ``--strict`` exits with 1 when one does not.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from statistics import mean

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
ZS_ID = (50.0, 75.0)
FT_GAIN = 10.0
ZS_OOD = (25.0, 85.0)
MAX_SE = 0.5
MIN_PRETRAIN_SEEDS = 3
TOP_LR_LOSS = 1.0  # points of ID-val the grid's largest lr loses against the pick
PRETRAINED = "pretrained"  # a run's key for its pretrained model's hash


def runs(results: list[Path], method: str) -> list[dict[str, float]]:
    """Accuracies (in points) of every seed of ``method`` under the results directories."""
    found = []
    for folder in results:
        for path in sorted((folder / method).glob("seed*/metrics.json")):
            found.append({k: 100 * v for k, v in json.loads(path.read_text()).items()})
            found[-1][PRETRAINED] = pretrained_of(path.with_name("provenance.json"))
    if not found:
        raise SystemExit(f"no {method}/seed*/metrics.json under {', '.join(map(str, results))}")
    return found


def pretrained_of(provenance: Path) -> str | None:
    """The hash of the pretrained model a run started from (its provenance), if recorded."""
    if not provenance.is_file():
        return None
    return json.loads(provenance.read_text()).get("pretrained_sha256")


def spread(values: list[float]) -> str:
    """The mean, and the range over runs where there are several."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{mean(values):.1f} ({min(values):.1f}-{max(values):.1f}, {len(values)} runs)"


def standard_errors(acc: dict[str, float], sizes: dict[str, int], ood: list[str]) -> tuple:
    """Binomial sampling standard errors (points) of the ID accuracy and of the OOD average."""

    def var(name):
        p = acc[name] / 100
        return p * (1 - p) / sizes[name]

    return (
        100 * math.sqrt(var("test")),
        100 * math.sqrt(sum(var(name) for name in ood)) / len(ood),
    )


def check(
    results: list[Path], tables: Path, pretrain_seeds: int | None = None
) -> list[tuple[str, str, bool]]:
    """(criterion, measured value, holds) for each criterion. ``pretrain_seeds``: how many
    pretrained models the runs start from; by default, the distinct pretrained hashes of their
    provenance (one per --results directory where none is recorded)."""
    sizes = {path.stem: pq.ParquetFile(path).metadata.num_rows for path in tables.glob("*.parquet")}
    zeroshot, ft = runs(results, "zeroshot"), runs(results, "ft")
    ood = [name for name in zeroshot[0] if name not in ("test", "avg_ood", PRETRAINED)]
    if pretrain_seeds is None:
        hashes = {run[PRETRAINED] for run in zeroshot + ft}
        pretrain_seeds = len(results) if None in hashes else len(hashes)
    missing = [name for name in ["test", *ood] if name not in sizes]
    if missing:
        raise SystemExit(f"{tables}: no table for {', '.join(missing)}")
    zs_id = [run["test"] for run in zeroshot]
    gain = mean([run["test"] for run in ft]) - mean(zs_id)
    rows = [
        (
            f"zero-shot ID accuracy in [{ZS_ID[0]:g}, {ZS_ID[1]:g}]",
            spread(zs_id),
            ZS_ID[0] <= mean(zs_id) <= ZS_ID[1],
        ),
        (
            f"ft gains >= {FT_GAIN:g} points ID over zero-shot",
            f"{gain:+.1f} (ft {spread([run['test'] for run in ft])})",
            gain >= FT_GAIN,
        ),
    ]
    for name in ood:
        values = [run[name] for run in zeroshot]
        rows.append(
            (
                f"zero-shot {name} accuracy in [{ZS_OOD[0]:g}, {ZS_OOD[1]:g}]",
                spread(values),
                ZS_OOD[0] <= mean(values) <= ZS_OOD[1],
            )
        )
    for label, group in (("zero-shot", zeroshot), ("ft", ft)):
        errors = [standard_errors(run, sizes, ood) for run in group]
        id_se, ood_se = max(e[0] for e in errors), max(e[1] for e in errors)
        rows.append(
            (
                f"{label} standard error <= {MAX_SE:g} point, ID / OOD average",
                f"{id_se:.2f} / {ood_se:.2f} (n = {sizes['test']} ID, "
                f"{min(sizes[name] for name in ood)} per OOD set)",
                max(id_se, ood_se) <= MAX_SE,
            )
        )
    rows.append(
        (
            f"pretraining seeds >= {MIN_PRETRAIN_SEEDS}",
            str(pretrain_seeds),
            pretrain_seeds >= MIN_PRETRAIN_SEEDS,
        )
    )
    return rows + regime(results, zeroshot, ft, ood)


def lr_pick(selection: dict) -> tuple[str, bool]:
    """How a sweep's pick sits in its lr grid: (description, strictly inside and the largest lr
    at least TOP_LR_LOSS points worse on ID-val). Scores per lr (sweep.json's fractions, here
    in points): the best over the other keys."""
    best: dict[float, float] = {}
    for run in selection["runs"]:
        lr, score = run["setting"]["lr"], run["val_score"]
        if isinstance(score, (int, float)) and math.isfinite(score):
            best[lr] = max(best.get(lr, -math.inf), 100 * score)
    lrs, pick = sorted(best), selection["picked"]["lr"]
    loss = best[pick] - best[lrs[-1]]
    inside = lrs[0] < pick < lrs[-1]
    return f"{pick:g} in {lrs[0]:g}..{lrs[-1]:g}, top -{loss:.1f}", inside and loss >= TOP_LR_LOSS


def wise_helps(curve: Path) -> tuple[str, bool]:
    """(the curve's OOD averages by alpha, whether an interior alpha beats both ends)."""
    with curve.open() as f:
        rows = sorted((float(r["alpha"]), 100 * float(r["avg_ood"])) for r in csv.DictReader(f))
    ends = max(rows[0][1], rows[-1][1]) if rows[0][0] == 0 and rows[-1][0] == 1 else math.inf
    inner = max((ood for alpha, ood in rows if 0 < alpha < 1), default=-math.inf)
    return " ".join(f"{ood:.1f}" for _, ood in rows), inner > ends


def regime(results: list[Path], zeroshot: list, ft: list, ood: list[str]) -> list:
    """The criteria of CLIP's finetuning regime (the module's docstring)."""
    selections = sorted(p for folder in results for p in folder.glob("*/sweep.json"))
    picks = {p.parent.name: lr_pick(json.loads(p.read_text())) for p in selections}
    curves = sorted(c for folder in results for c in (folder / "ft").glob("seed*/wise_curve.csv"))
    helps = [wise_helps(c) for c in curves]
    by_model = {run[PRETRAINED]: run for run in zeroshot}
    distorts = []
    for run in ft:
        zs = by_model.get(run[PRETRAINED], zeroshot[0])
        worst = min(ood, key=lambda name: run[name] - zs[name])
        gain, drop = run["test"] - zs["test"], run[worst] - zs[worst]
        distorts.append((f"+{gain:.1f} ID, {worst} {drop:+.1f}", gain >= FT_GAIN and drop < 0))
    return [
        (
            f"small lrs win: each pick strictly inside its grid, top lr >= {TOP_LR_LOSS:g} worse",
            "; ".join(f"{m} {text}" for m, (text, _) in picks.items()) or "no sweep.json",
            bool(picks) and all(ok for _, ok in picks.values()),
        ),
        (
            "weight ensembling helps: an alpha in (0, 1) beats both ends on OOD, every ft run",
            " | ".join(text for text, _ in helps) or "no ft/seed*/wise_curve.csv",
            bool(helps) and all(ok for _, ok in helps),
        ),
        (
            f"ft distorts: >= {FT_GAIN:g} above zero-shot ID, below it on an OOD set, every seed",
            "; ".join(text for text, _ in distorts),
            all(ok for _, ok in distorts),
        ),
    ]


def report(rows: list[tuple[str, str, bool]]) -> str:
    """One line per criterion (met or FAIL, the criterion, its value), then the count met."""
    width = max(len(row[0]) for row in rows)
    lines = [
        f"{'met ' if holds else 'FAIL'}  {criterion.ljust(width)}  {value}"
        for criterion, value, holds in rows
    ]
    met = sum(holds for _, _, holds in rows)
    return "\n".join([*lines, f"{met} of {len(rows)} criteria met"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results",
        type=Path,
        action="append",
        help="a directory of zeroshot/ and ft/ runs, one per pretraining seed "
        "(default: results/embedded)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data/embedded/tables",
        help="the benchmark's tables (their row counts are the set sizes)",
    )
    parser.add_argument(
        "--pretrain-seeds",
        type=int,
        default=None,
        help="pretrained models behind the runs (default: the distinct "
        "pretrained hashes in the runs' provenance.json)",
    )
    parser.add_argument("--strict", action="store_true", help="exit with 1 when one fails")
    args = parser.parse_args()
    results = args.results or [ROOT / "results/embedded"]
    rows = check(results, args.data, args.pretrain_seeds)
    print(report(rows))
    if args.strict and not all(holds for _, _, holds in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
