"""The data manifest: what ``prepare`` wrote, with a content hash per table.

``data/<benchmark>/manifest.json`` lets every later step name the exact data it used (the data hash
in the results table) without rehashing the tables.
"""

from __future__ import annotations

from pathlib import Path

from flyp.datasets import Benchmark, table_path
from flyp.io import UserError, read_json, sha256_json, write_json

MANIFEST = "manifest.json"


def write_manifest(data_dir: Path, bench: Benchmark, settings: dict) -> None:
    from flyp.datasets.parquet import read_table
    from flyp.io import sha256_file

    tables = {}
    for name in bench.tables():
        path = table_path(data_dir, name)
        if not path.is_file():
            raise UserError(f"{path}: prepare did not write this table")
        tables[name] = {"sha256": sha256_file(path), "rows": len(read_table(path, ["label"]))}
    write_json(Path(data_dir) / MANIFEST, {"benchmark": bench.name, "settings": settings,
                                           "classes": bench.classnames, "tables": tables})


def data_hash(data_dir: Path) -> str:
    """One hash for the whole prepared benchmark (its tables' hashes)."""
    manifest = read_json(Path(data_dir) / MANIFEST)
    return sha256_json({k: v["sha256"] for k, v in manifest["tables"].items()})
