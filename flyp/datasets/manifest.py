"""The data manifest: what ``prepare`` wrote, with a content hash per table.

``data/<benchmark>/manifest.json`` names the tables ``prepare`` wrote and how; ``data_hash``
hashes those tables as they are when a later step reads them (the data hash in the results table).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flyp.datasets import Benchmark, table_path
from flyp.io import UserError, read_json, sha256_file, write_json

MANIFEST = "manifest.json"


def write_manifest(data_dir: Path, bench: Benchmark, settings: dict) -> None:
    from flyp.datasets.parquet import read_table

    tables = {}
    for name in bench.tables():
        path = table_path(data_dir, name)
        if not path.is_file():
            raise UserError(f"{path}: prepare did not write this table")
        tables[name] = {"sha256": sha256_file(path), "rows": len(read_table(path, ["label"]))}
    write_json(
        Path(data_dir) / MANIFEST,
        {
            "benchmark": bench.name,
            "settings": settings,
            "classes": bench.classnames,
            "tables": tables,
        },
    )


def data_hash(data_dir: Path) -> str:
    """One hash of the prepared benchmark as it is now on disk (not as the manifest recorded it):
    a table changed after ``prepare`` changes the hash.

    Every table of the manifest contributes the SHA-256 of its Parquet bytes; for the embedded
    benchmark these hold the images themselves. A table of image paths (the real benchmarks, whose
    images stay in ``data/raw/``) also contributes each referenced file's path, size and
    modification time, not its bytes: hashing ImageNet's 150 GB for every job's provenance would
    take longer than most jobs, while a stat is microseconds. The trade-off: a file edited in place
    with its size kept and its mtime restored goes unnoticed, and the same images extracted again
    (or on another machine) get new mtimes, so a new hash although no byte changed. A hash can
    thus say "changed" of equal data, never "same" of data that was replaced or rewritten.
    """
    manifest = read_json(Path(data_dir) / MANIFEST)
    h = hashlib.sha256()
    for name in sorted(manifest["tables"]):
        path = table_path(data_dir, name)
        if not path.is_file():
            raise UserError(f"{path}: table listed in {MANIFEST} not found; rerun the data step")
        h.update(json.dumps([name, sha256_file(path), referenced_files(path)]).encode())
    return h.hexdigest()


def referenced_files(table: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of every image file a path-based table references (relative to
    the table's folder, as ``flyp.datasets.tables.ImageTable`` reads them); [] for a table of
    embedded images."""
    from flyp.datasets.parquet import read_table

    try:
        columns = pq.read_schema(table).names
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{table}: not a readable Parquet table ({e})") from None
    if "path" not in columns:
        return []
    out = []
    for rel in sorted(set(read_table(table, ["path"])["path"])):
        try:
            st = os.stat(table.parent / rel)
        except OSError as e:
            raise UserError(
                f"{table}: image file {rel!r} not readable ({e.strerror}); the raw "
                f"data changed after the data step, rerun it"
            ) from None
        out.append((rel, st.st_size, st.st_mtime_ns))
    return out
