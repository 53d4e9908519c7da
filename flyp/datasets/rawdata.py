"""Reading a real benchmark's unpacked files, and the seeded splits made from them.

The download rules (``workflow/rules/download.smk``, ``flyp.datasets.download``) fetch each
``Download`` of a benchmark and unpack it into ``data/raw/<name>/`` (a folder the user already had
is linked there as ``source/``); ``prepare`` only reads. ``locate`` finds, inside that folder, the
folder that holds the files (archives wrap them in one or two folders).

Splits the datasets do not define are drawn per class from a seeded generator, and every prepare
step records what it did (seed, fractions, sizes) in ``splits.json`` beside its tables: the
reference code's random splits were never seeded, so its numbers cannot be rerun on its splits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flyp.datasets.parquet import write_table
from flyp.io import UserError, write_json

SPLITS_RECORD = "splits.json"


def _walk_dirs(root: Path, depth: int) -> Iterable[Path]:
    """Folders under ``root`` (itself included), breadth first, sorted, at most ``depth`` deep;
    lazily, so that a match near the top never lists a big image folder below."""
    level = [root]
    for d in range(depth + 1):
        yield from level
        if d == depth:
            return
        below = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            below += [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
        level = below


def find_dir(root: Path, markers: Sequence[str], depth: int = 3) -> Path | None:
    """The shallowest folder at or under ``root`` holding every path in ``markers``."""
    if not root.is_dir():
        return None
    return next(
        (d for d in _walk_dirs(root, depth) if all((d / m).exists() for m in markers)), None
    )


def locate(folder: str | os.PathLike, markers: Sequence[str], what: str, hint: str = "") -> Path:
    """The folder at or under ``folder`` (``data/raw/<download name>``) holding every path in
    ``markers``; a UserError saying what is missing otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"{what}: {folder} not found; fetch and unpack the raw data first (the "
            f"download rules, or `flyp download`). {hint}".strip()
        )
    found = find_dir(folder, markers)
    if found is None:
        raise UserError(f"{what}: no folder with {', '.join(markers)} in {folder}. {hint}".strip())
    return found


def image_path(file: Path, out_dir: Path) -> str:
    """How a table in ``out_dir`` names ``file`` (or a folder of files): relative to the table's
    folder, as every table of a real benchmark does, so that data/ can move as a whole."""
    rel = os.path.relpath(os.path.abspath(file), os.path.abspath(out_dir))
    return rel.replace(os.sep, "/")


def class_folder_images(
    root: Path, folders: Sequence[str], pattern: str
) -> tuple[list[Path], list[int]]:
    """Image files of ``root/<folder>/`` matching ``pattern`` (sorted), labelled by the folder's
    index in ``folders``; every folder must exist and hold at least one image."""
    files, labels = [], []
    for label, folder in enumerate(folders):
        found = sorted((root / folder).glob(pattern))
        if not found:
            raise UserError(f"{root / folder}: no {pattern} images (incomplete extraction?)")
        files += found
        labels += [label] * len(found)
    return files, labels


def write_image_table(
    path: Path, image_ids: Sequence[str], labels: Sequence[int], paths: Sequence[str]
) -> int:
    """Write a table of image files (``image_id``, int64 ``label``, ``path``); returns its
    number of rows."""
    df = pd.DataFrame(
        {
            "image_id": pd.Series(list(image_ids), dtype=str),
            "label": pd.Series(list(labels), dtype="int64"),
            "path": pd.Series(list(paths), dtype=str),
        }
    )
    write_table(df, path)
    return len(df)


def check_exist(files: Iterable[Path], what: str) -> None:
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(
            f"{what}: {len(missing)} image files missing, e.g. {missing[0]} "
            "(incomplete download or extraction?)"
        )


# ----------------------------------------------------------------------------------------------
# Seeded splits.


def stratified_split(
    labels: Sequence[int], fractions: dict[str, float], seed: int, rest: str = "train"
) -> dict[str, np.ndarray]:
    """Row indices per split: in each class (ascending), a seeded permutation of its rows gives
    ``round(fraction * n)`` rows to each named split in order; the remaining rows go to ``rest``.
    The result depends only on (labels, fractions, seed)."""
    labels = np.asarray(labels)
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise UserError(
            f"split fractions {fractions}: each must be >= 0 and together < 1 "
            f"(the rest is {rest!r})"
        )
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {name: [] for name in [*fractions, rest]}
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for name, fraction in fractions.items():
            n = int(round(fraction * len(rows)))
            out[name].append(rows[start : start + n])
            start += n
        out[rest].append(rows[start:])
    return {
        name: np.sort(np.concatenate(parts)) if parts else np.zeros(0, int)
        for name, parts in out.items()
    }


def per_class_sample(
    labels: Sequence[int], per_class: int, seed: int | Sequence[int]
) -> np.ndarray:
    """Sorted row indices of a seeded draw of ``per_class`` rows from each class (all rows of a
    class with fewer)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        picked.append(rng.choice(rows, min(per_class, len(rows)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, int)


def write_split_record(out_dir: str | os.PathLike, record: dict) -> None:
    """``splits.json``: how the tables were split (source, seed, fractions) and their sizes."""
    write_json(Path(out_dir) / SPLITS_RECORD, record)
