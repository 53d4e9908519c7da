"""The evaluation cache: ID-val and every eval set transformed once, kept as uint8 arrays.

The eval transform (resize, centre crop) is deterministic, so every evaluation of a benchmark
(each method, seed, few-shot draw and ensemble alpha) would decode and transform the same images
to the same pixels. ``flyp evalcache`` does it once, at the preprocessing of the pretrained
checkpoint, which every checkpoint of the benchmark carries (``flyp.models.preprocess_cfg``):

    <out>/evalcache.json     format, the transform's settings, each set's source-table hash
    <out>/<set>.npy          uint8 (N, 3, H, W): the eval transform's output, row by row
    <out>/<set>.parquet      the table's rows without the image bytes (labels, regions, ...)

Evaluation memory-maps the arrays (``np.load(mmap_mode="r")``): reading an image is a copy of
bytes the page cache already holds, shared by the jobs that run at once. The values are those
the transform gives, so the metrics are the same to the bit as without the cache.

A cache is used only where it is known to hold what the transform would give now: made with the
same geometry (size, mode, interpolation, resize mode, fill colour; the mean and std are applied
on the device and do not enter it) and from the tables as they are now (their SHA-256). Anything
else is refused with one line, not silently bypassed: a cache that was passed but does not fit
is a workflow error (a stale or misplaced folder), and falling back would hide it behind an
evaluation many times slower.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from flyp.io import UserError, atomic_path, read_json, sha256_file, write_json
from flyp.loading import make_loader
from flyp.progress import progress_bar

FORMAT = "flyp-evalcache/1"
MANIFEST = "evalcache.json"
# What decides the uint8 pixels of the eval transform (open_clip's PreprocessCfg less mean/std).
TRANSFORM_KEYS = ("size", "mode", "interpolation", "resize_mode", "fill_color")


def transform_key(cfg: dict) -> dict:
    """The settings of a preprocessing config that the cached pixels depend on, in their JSON
    form (a tuple and a list of the same sizes compare equal)."""
    return json.loads(json.dumps({k: cfg.get(k) for k in TRANSFORM_KEYS}))


def cached_sets(bench) -> list[str]:
    """ID-val (model selection) and every eval set of ``bench``."""
    return ["val", *(s.name for s in bench.eval_sets)]


def write_eval_cache(
    bench,
    checkpoint: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    log=print,
) -> None:
    """Transform every set of ``cached_sets(bench)`` with ``checkpoint``'s eval transform and write
    the cache into ``out_dir`` (each file atomically; a previous manifest removed first and the
    new one written last, so a folder without one, or half rewritten, is not a cache)."""
    from flyp.datasets import table_path
    from flyp.datasets.tables import ImageTable
    from flyp.models import load_checkpoint, preprocess_cfg, preprocess_transforms

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a folder")
    cfg = preprocess_cfg(load_checkpoint(checkpoint))
    _, eval_tf = preprocess_transforms(cfg)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    sets = {}
    for name in cached_sets(bench):
        table = table_path(data_dir, name)
        dataset = ImageTable(table, eval_tf)
        digest = sha256_file(table)  # of the table just read
        if len(dataset) == 0:
            raise UserError(f"{table}: no images; expected at least one to evaluate on")
        write_images(
            dataset, out_dir / f"{name}.npy", batch_size=batch_size, num_workers=num_workers
        )
        write_rows(dataset.df, out_dir / f"{name}.parquet")
        sets[name] = {"table_sha256": digest, "rows": len(dataset)}
        log(f"{name}: {len(dataset)} images cached")
    write_json(
        out_dir / MANIFEST,
        {"format": FORMAT, "benchmark": bench.name, "transform": transform_key(cfg), "sets": sets},
    )


def write_images(dataset, path: Path, *, batch_size: int, num_workers: int) -> None:
    """The dataset's transformed uint8 images as one (N, 3, H, W) .npy, filled batch by batch
    (never all in memory: ImageNet's ID-val and test sets take 27 GB at 224 px)."""
    shape = (len(dataset), *dataset[0][0].shape)
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        start = 0
        loader = make_loader(dataset, batch_size=batch_size, workers=num_workers)
        with progress_bar(total=len(dataset), unit="img", desc=f"caching {path.stem}") as bar:
            for images, _ in loader:
                array[start : start + len(images)] = images.numpy()
                start += len(images)
                bar.update(len(images))
        array.flush()
        del array


def write_rows(df: pd.DataFrame, path: Path) -> None:
    """The table's columns other than the encoded images: what metrics read (labels, regions,
    a set's class map)."""
    from flyp.datasets.parquet import write_table

    write_table(df.drop(columns=["image"], errors="ignore"), path)


class CachedImages(torch.utils.data.Dataset):
    """One cached set: (uint8 image (3, H, W), label) per row, read from the memory map; ``df``
    holds the table's rows for the metrics, as ``ImageTable.df`` does."""

    held_as_tensors = True  # a memory map: flyp.loading.make_loader reads it in the main process

    def __init__(self, images: np.ndarray, df: pd.DataFrame):
        self.images = images  # (N, 3, H, W) uint8, memory-mapped
        self.df = df
        self.labels = torch.tensor(df["label"].to_numpy(), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.array(self.images[i])), self.labels[i]

    def subset(self, rows: np.ndarray) -> CachedImages:
        """The rows ``rows`` only (a few-shot validation sample: k per class), copied into
        memory."""
        return CachedImages(self.images[rows], self.df.iloc[rows].reset_index(drop=True))


class EvalCache:
    """A cache folder checked against the preprocessing of the model it will serve and against
    the tables in ``data_dir`` (see the module's docstring for why a mismatch is refused)."""

    def __init__(self, folder: Path, data_dir: Path, preprocess: dict):
        self.folder, self.data_dir = Path(folder), Path(data_dir)
        where = f"--eval-cache {self.folder}"
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise UserError(
                f"{where}: not an evaluation cache (no {MANIFEST}); make it with `flyp evalcache`"
            )
        self.manifest = read_json(manifest)
        if self.manifest.get("format") != FORMAT:
            raise UserError(
                f"{where}: format {self.manifest.get('format')!r}, expected "
                f"{FORMAT!r}; make it again with `flyp evalcache`"
            )
        made, wanted = self.manifest["transform"], transform_key(preprocess)
        if made != wanted:
            differ = ", ".join(
                f"{k} {made.get(k)!r} (model: {wanted[k]!r})"
                for k in TRANSFORM_KEYS
                if made.get(k) != wanted[k]
            )
            raise UserError(
                f"{where}: made for another preprocessing than the model's: "
                f"{differ}; make it again with `flyp evalcache` from this model's "
                f"pretrained checkpoint"
            )

    def dataset(self, name: str) -> CachedImages:
        """Set ``name``, after checking it was made from the table as it is now."""
        from flyp.datasets import table_path
        from flyp.datasets.parquet import read_table

        where = f"--eval-cache {self.folder}"
        entry = self.manifest["sets"].get(name)
        if entry is None:
            raise UserError(
                f"{where}: has no set {name!r} (it has {sorted(self.manifest['sets'])})"
            )
        table = table_path(self.data_dir, name)
        if not table.is_file() or sha256_file(table) != entry["table_sha256"]:
            raise UserError(
                f"{where}: set {name!r} was made from another {table} than the one "
                f"there now; make the cache again with `flyp evalcache`"
            )
        try:
            images = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UserError(
                f"{self.folder / f'{name}.npy'}: not a readable cached array "
                f"({e}); make the cache again"
            ) from None
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != entry["rows"]:
            raise UserError(
                f"{self.folder / f'{name}.npy'}: {images.dtype} {images.shape}, "
                f"expected uint8 ({entry['rows']}, 3, H, W); make the cache again"
            )
        return CachedImages(images, read_table(self.folder / f"{name}.parquet"))


def open_eval_cache(folder, data_dir, preprocess: dict) -> EvalCache | None:
    """The cache in ``folder`` for a model with preprocessing ``preprocess``; None without one."""
    return None if folder is None else EvalCache(folder, data_dir, preprocess)
