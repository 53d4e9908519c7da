"""Parquet tables: atomic writes and checked reads.

Kept apart from ``flyp.datasets.tables`` (the torch Dataset) so that the download and prepare steps,
and the Snakefile, never import torch.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flyp.io import UserError, atomic_path

REQUIRED_COLUMNS = {"image_id", "label"}


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` to Parquet atomically (temp file + rename), without the pandas index."""
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The table (or its ``columns``); a missing table, one that is not Parquet, or one without
    the columns asked for (every table needs REQUIRED_COLUMNS) is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: table not found (run the data step first)")
    try:
        present = pq.read_schema(path).names
        missing = set(REQUIRED_COLUMNS if columns is None else columns) - set(present)
        if missing:
            raise UserError(
                f"{path}: missing columns {sorted(missing)} (it has {present}); "
                f"rerun the step that wrote it"
            )
        return pq.read_table(path, columns=columns).to_pandas()
    except (pa.ArrowInvalid, OSError) as e:
        reason = " ".join(str(e).split())  # Arrow's messages span lines (schemas)
        raise UserError(f"{path}: not a readable Parquet table ({reason})") from None
