"""Check the embedded benchmark against the criteria of a fair miniature.

The criteria look only at zero-shot and standard finetuning (``ft``) and at the test sets' sizes,
never at which method wins:

- zero-shot ID accuracy between 50% and 75%;
- standard finetuning gains at least 10 points ID over zero-shot;
- every OOD set's zero-shot accuracy between 25% and 85%;
- a sampling standard error of at most 0.5 point on ID and on the OOD average, for both;
- several pretraining seeds (at least 3), each its own pretrained CLIP.

    python benchmarks/miniature.py                        # the main job's results
    python benchmarks/miniature.py --results DIR [--results DIR ...] --data TABLES

Each ``--results`` directory holds ``zeroshot/seed*/metrics.json`` and ``ft/seed*/metrics.json``
(one directory per pretraining seed; the main job's ``results/embedded`` by default). Prints each
criterion with its measured value (mean over the runs, and the range where there are several)
and whether it holds; ``--strict`` exits with 1 when one does not.
"""

from __future__ import annotations

import argparse
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
    return rows


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
