"""PatchCamelyon (few-shot): 96x96 lymph-node patches, with or without metastatic tissue.

The official HDF5 files (``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``, on Zenodo as
``.h5.gz``; the download step unpacks them) hold the images (``x``: N x 96 x 96 x 3, uint8) and
labels (``y``: N x 1 x 1 x 1). Tables index image files, so ``prepare`` writes each patch it keeps
as a PNG under ``images/<table>/`` beside the tables.

The paper's protocol is few-shot: k images per class for training and k for validation, repeated
over draws, sampled by the finetuning step (``presets.pcam.fewshot``); the test set is the whole
official test split (32,768). ``train_per_class`` / ``val_per_class`` optionally keep only a seeded
per-class sample of the official train (262,144) / valid (32,768) splits, so that 300k PNGs need
not be written for k-shot draws (a uniform draw from a uniform sample is a uniform draw).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from flyp.datasets import Benchmark, Download, EvalSet, register_benchmark
from flyp.datasets.rawdata import (
    locate,
    per_class_sample,
    write_image_table,
    write_split_record,
)
from flyp.io import UserError

CLASSNAMES = ["lymph node", "lymph node containing metastatic tumor tissue"]  # label 0, 1
TEMPLATES = ["this is a photo of {}"]

SPLITS = {"train": "train", "val": "valid", "test": "test"}  # table -> split in the file names
_ZENODO = "https://zenodo.org/record/2546921/files/"


def h5_name(split: str, xy: str) -> str:
    return f"camelyonpatch_level_2_split_{split}_{xy}.h5"


def download_name(split: str, xy: str) -> str:
    return f"pcam_{split}_{xy}"


# No checksums: the MD5s published for the Google Drive copies (torchvision) and for Zenodo have
# not been checked against each other.
DOWNLOADS = [
    Download(download_name(split, xy), f"{_ZENODO}{h5_name(split, xy)}.gz?download=1")
    for split in SPLITS.values()
    for xy in ("x", "y")
]
_CHUNK = 4096  # rows read from the HDF5 file at a time


def _dataset(f, key: str):
    """The array ``key`` of an official file (or its only array, whatever its name)."""
    if key in f:
        return f[key]
    if len(f) == 1:
        return f[next(iter(f))]
    raise UserError(f"{f.filename}: no {key!r} array (has {list(f)})")


def write_split(
    x_file: Path, y_file: Path, table: str, out_dir: Path, per_class: int, seed: list[int]
) -> int:
    """PNGs and table of one split: every row, or ``per_class`` rows per class drawn from
    ``seed``. Returns the number of rows."""
    import h5py

    with h5py.File(y_file, "r") as fy:
        labels = np.asarray(_dataset(fy, "y")[()]).reshape(-1).astype(np.int64)
    rows = per_class_sample(labels, per_class, seed) if per_class else np.arange(len(labels))
    folder = out_dir / "images" / table
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(x_file, "r") as fx:
        images = _dataset(fx, "x")
        if images.shape[0] != len(labels):
            raise UserError(f"{x_file}: {images.shape[0]} images for {len(labels)} labels")
        for start in range(0, len(labels), _CHUNK):
            wanted = rows[(rows >= start) & (rows < start + _CHUNK)]
            if len(wanted) == 0:
                continue
            block = images[start : min(start + _CHUNK, len(labels))]  # (B, 96, 96, 3)
            for r in wanted:
                Image.fromarray(block[r - start]).save(folder / f"{r:06d}.png", compress_level=1)
    return write_image_table(
        out_dir / f"{table}.parquet",
        [f"{table}-{r:06d}" for r in rows],
        labels[rows],
        [f"images/{table}/{r:06d}.png" for r in rows],
    )


def prepare(
    out_dir: Path,
    *,
    raw_dir: str = "data/raw",
    split_seed: int = 0,
    train_per_class: int = 0,
    val_per_class: int = 0,
) -> None:
    """train/val/test tables and PNGs from the six unpacked HDF5 files in ``raw_dir``
    (``pcam_<split>_<x|y>/``); ``*_per_class`` 0 keeps the whole split."""
    out_dir, raw = Path(out_dir), Path(raw_dir)
    keep = {"train": train_per_class, "val": val_per_class, "test": 0}
    sizes = {}
    for i, (table, split) in enumerate(SPLITS.items()):
        files = {
            xy: locate(raw / download_name(split, xy), [h5_name(split, xy)], "pcam")
            / h5_name(split, xy)
            for xy in ("x", "y")
        }
        sizes[table] = write_split(
            files["x"], files["y"], table, out_dir, keep[table], [split_seed, i]
        )
    write_split_record(
        out_dir,
        {
            "benchmark": "pcam",
            "split": "official (HDF5 files)",
            "files": SPLITS,
            "seed": split_seed,
            "per_class": {k: v or "all" for k, v in keep.items()},
            "sizes": sizes,
        },
    )


@register_benchmark("pcam")
def pcam_benchmark() -> Benchmark:
    return Benchmark(
        name="pcam",
        classnames=list(CLASSNAMES),
        templates=list(TEMPLATES),
        eval_sets=[EvalSet("test", ood=False, description="official PatchCamelyon test split")],
        prepare=prepare,
        downloads=list(DOWNLOADS),
        description="PatchCamelyon: metastatic tissue in lymph-node patches (few-shot)",
    )
