"""The results table and the DVC metrics file, with each row's provenance."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd

from flyp.datasets import get_benchmark
from flyp.io import atomic_path, read_json, write_json


def git_revision(cwd: Path | None = None) -> str:
    """HEAD's commit, with "-dirty" when tracked files differ from it; "unknown" outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def write_report(benchmark_name: str, methods: list[str], results_dir: Path, table: Path,
                 metrics_out: Path) -> pd.DataFrame:
    bench = get_benchmark(benchmark_name)
    columns = [s.name for s in bench.eval_sets] + (["avg_ood"] if bench.ood_sets else [])
    # The ID test set is called "id" in the table and metrics, whatever its table is named.
    label = {c: ("id" if c == bench.id_set.name else c) for c in columns}
    rows, nested = [], {}
    revision = git_revision()
    for method in methods:
        metrics = read_json(Path(results_dir) / method / "metrics.json")
        prov = read_json(Path(results_dir) / method / "provenance.json")
        nested[method] = {label[c]: round(metrics[c], 6) for c in columns}
        rows.append({"method": method,
                     **{label[c]: round(100 * metrics[c], 2) for c in columns},
                     "best_epoch": prov["best_epoch"], "seed": prov["seed"],
                     "checkpoint_sha256": prov["checkpoint_sha256"][:16],
                     "data_hash": prov["data_hash"][:16], "params_hash": prov["params_hash"][:16],
                     "git_revision": revision})
    df = pd.DataFrame(rows)
    with atomic_path(table) as tmp:
        df.to_csv(tmp, index=False)
    write_json(metrics_out, nested)
    return df
