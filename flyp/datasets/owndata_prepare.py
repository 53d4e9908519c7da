"""The prepare step of a user's own data (flyp.datasets.owndata): list, check, split, write.

Every check runs before the first table is written, so bad input leaves nothing behind. An image
is checked by opening its header (PIL reads the format and size, not the pixels): a zero-byte or
unreadable image stops the step with one line naming it; a file whose suffix is not an image's
is skipped and counted.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from flyp.datasets.parquet import write_table
from flyp.datasets.rawdata import image_path, stratified_split, write_split_record
from flyp.io import UserError


def image_problem(file: str) -> str | None:
    """Why ``file`` is not a readable image (None: it is)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(file) == 0:
            return "zero-byte image"
        with Image.open(file) as im:
            im.size  # noqa: B018 (the header is parsed on open; size proves it)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return f"not a readable image ({type(e).__name__}: {e})"
    return None


def check_images(files: list[str], workers: int) -> None:
    """Each file opens as an image; the first that does not is a one-line UserError."""
    chunk = max(1, len(files) // (8 * max(1, workers)))
    if workers > 1 and len(files) > 1000:
        with ProcessPoolExecutor(workers) as pool:
            problems = list(pool.map(image_problem, files, chunksize=chunk))
    else:
        problems = [image_problem(f) for f in files]
    for file, problem in zip(files, problems, strict=True):
        if problem:
            raise UserError(f"{file}: {problem}")


def image_rows(source) -> tuple[pd.DataFrame, int]:
    """The images of ``source`` (a flyp.datasets.owndata.OwnData) as (split, label, path,
    group) rows, and how many other files it skipped."""
    rows = pd.DataFrame(source.listing(), columns=["split", "label", "path", "group"])
    is_image = rows["path"].map(source.is_image)
    images = rows[is_image].reset_index(drop=True)
    normal = images["path"].map(os.path.normpath)
    twice = normal[normal.duplicated()]
    if len(twice):
        raise UserError(f"{source.path}: path {twice.iloc[0]!r} is listed more than once")
    if source.dataset == "imagefolder":
        check_class_folders(source, images)
    else:
        for rel in images["path"]:
            if not (source.base / rel).is_file():
                raise UserError(f"{source.base / rel}: image file not found ({source.path})")
    return images, int((~is_image).sum())


def check_class_folders(source, images: pd.DataFrame) -> None:
    """Every class folder of every split holds at least one image."""
    have = set(zip(images["split"], images["label"], strict=True))
    for split, labels in source.splits().items():
        for label in labels:
            if (split, label) not in have:
                folder = Path(source.path) / (
                    "ood/" if split not in ("train", "val", "test") else ""
                )
                raise UserError(f"{folder / split / label}: empty class folder (no images)")


def held_out_val(train: pd.DataFrame, seed: int, val_size: int, val_fraction: float):
    """(train, val): a seeded per-class sample of train as val, ``val_size`` images in all when
    above 0 (each class gives its share), else ``val_fraction`` of each class."""
    fraction = val_size / len(train) if val_size > 0 else val_fraction
    if not 0 < fraction < 1:
        raise UserError(
            f"val_size {val_size} / val_fraction {val_fraction}: the val sample must be more "
            f"than none and less than the {len(train)} train images"
        )
    parts = stratified_split(train["label_index"].to_numpy(), {"val": fraction}, seed)
    if len(parts["val"]) == 0:
        raise UserError(f"val_fraction {fraction:.3g} of {len(train)} train images holds none")
    return train.iloc[parts["train"]], train.iloc[parts["val"]]


def prepare_tables(
    source, out_dir: Path, seed: int, val_size: int, val_fraction: float, workers: int
) -> None:
    images, skipped = image_rows(source)
    bench = source.benchmark()  # checks the classes of every split, classnames and templates
    keys = source.class_keys()
    images["label_index"] = images["label"].map({k: i for i, k in enumerate(keys)})
    check_images([str(source.base / p) for p in images["path"]], workers)
    tables = {name: images[images["split"] == name] for name in images["split"].unique()}
    record = {"seed": seed, "val": "the val split"}
    if "val" not in tables:
        tables["train"], tables["val"] = held_out_val(tables["train"], seed, val_size, val_fraction)
        record["val"] = f"held out of train: val_size {val_size}, val_fraction {val_fraction}"
    groups = source.has_groups()
    for name in bench.tables():
        write_table(
            table_frame(tables[name], source.base, out_dir, groups), out_dir / f"{name}.parquet"
        )
    write_split_record(
        out_dir,
        {
            "benchmark": source.name,
            "source": source.spec(),
            "split": record,
            "classes": keys,
            "skipped_files": skipped,
            "sizes": {name: len(tables[name]) for name in bench.tables()},
        },
    )
    print(
        f"{len(images)} images in {len(tables)} splits, {len(keys)} classes; skipped "
        f"{skipped} files that are not images",
        file=sys.stderr,
    )


def table_frame(rows: pd.DataFrame, base: Path, out_dir: Path, groups: bool) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "image_id": pd.Series(list(rows["path"]), dtype=str),
            "label": pd.Series(rows["label_index"].to_numpy(np.int64), dtype="int64"),
            "path": pd.Series([image_path(base / p, out_dir) for p in rows["path"]], dtype=str),
        }
    )
    if groups:
        out["group"] = pd.Series(list(rows["group"]), dtype=str)
    return out
