"""A resized copy of a path table's images, made once, for training to decode fewer pixels.

Training decodes every train image in full each epoch before its random crop shrinks it to the
model's size: ImageNet's JPEGs are about 500x375 (some thousands of pixels wide), decoded by PIL
at about 200 images/s per core (benchmarks/RESULTS.md). ``write_resized_copy`` writes each image
of a path table with its shorter side cut to ``side`` px (PIL's antialiased bicubic, the train
transform's filter; JPEG quality ``QUALITY``), and a table of the same rows pointing at them:

    <out>/manifest.json       format, side, quality; per table its rows and its source's SHA-256
    <out>/<table>.parquet     the source table's rows and columns, ``path`` into the copy
    <out>/images/<table>/<row // 1000>/<row>.<suffix>

An image whose shorter side is already at most ``side`` is copied byte for byte (its pixels are
the source's). The crop then sees the same boxes in the image's own coordinates (the box depends
on the aspect ratio and the area fraction, not on the pixel count); with ``side`` at least
``crop_side_needed(size)`` every box is at least ``size`` px on each side, so the crop is
downsampled from either source (tests/test_resized.py compares the crops' statistics).

The manifest has ``tables`` as ``flyp prepare``'s has, so ``flyp.datasets.manifest.data_hash``
hashes the copy as it is on disk (a run's provenance). A copy is read only where its source table
is the one there now (``open_resized``); anything else is one line, not a silent fallback.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from flyp.io import UserError, read_json, sha256_file, sha256_json, write_json

FORMAT = "flyp-resized/1"
MANIFEST = "manifest.json"  # the name and ``tables`` layout of flyp prepare's (data_hash reads it)
# JPEG quality of a resized image. PIL's default chroma subsampling (4:2:0, as the ImageNet
# originals mostly are) keeps decoding fast; 95 keeps the re-encoding error well below the
# differences between two random crops (tests/test_resized.py).
QUALITY = 95
IMAGES = "images"
# open_clip's train crop (flyp.models.preprocess_transforms): RandomResizedCrop with the area
# fraction in (0.9, 1.0) and the aspect ratio in (3/4, 4/3), as FLYP trains.
CROP_SCALE_MIN, CROP_RATIO_MIN = 0.9, 3 / 4


def crop_side_needed(size: int) -> int:
    """The shorter side at which every box RandomResizedCrop(size, scale=(0.9, 1)) cuts is at
    least ``size`` px on each side (so it is downsampled, never enlarged). A box of area fraction
    s and aspect ratio r in an image of sides S <= L has sides sqrt(s S L r) and sqrt(s S L / r):
    the least, on a square image, is S sqrt(0.9 * 3/4) = 0.82 S. 224 px: 273."""
    return math.ceil(size / math.sqrt(CROP_SCALE_MIN * CROP_RATIO_MIN) - 1e-9)


def resized_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``side`` and the aspect ratio kept (rounded)."""
    if width <= height:
        return side, max(side, round(height * side / width))
    return max(side, round(width * side / height)), side


def resize_image(src: Path, dst: Path, side: int) -> tuple[str, bool]:
    """Write ``src`` resized into ``dst`` (its suffix set here), or copied when its shorter side
    is at most ``side``; returns the file name written and whether it was resized. Every image is
    decoded in full, so an unreadable one fails here, not in training."""
    with Image.open(src) as im:
        im.load()
        if min(im.size) <= side:
            dst = dst.with_suffix(src.suffix.lower() or ".img")
            shutil.copyfile(src, dst)
            return dst.name, False
        # as flyp.datasets.tables.ImageTable reads it: RGB (grey stays grey: the loader's
        # convert("RGB") repeats the one channel, as resizing three equal channels would)
        image = im if im.mode in ("RGB", "L") else im.convert("RGB")
        small = image.resize(resized_size(*image.size, side), Image.BICUBIC)
    dst = dst.with_suffix(".jpg")
    small.save(dst, "JPEG", quality=QUALITY)
    return dst.name, True


def _resize_job(job: tuple[str, str, int]) -> tuple[str | None, bool, str | None]:
    """One image in a worker: (file name, resized, None), or (None, False, the reason) for an
    image that cannot be read (the main process names it: one line)."""
    src, dst, side = job
    try:
        return *resize_image(Path(src), Path(dst), side), None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return None, False, f"{type(e).__name__}: {e}"


def image_folder(row: int) -> str:
    """The copy's sub-folder of a row: a thousand files a folder (ImageNet: 1,281 folders)."""
    return f"{row // 1000:04d}"


def resize_table(data_dir: Path, tmp: Path, name: str, side: int, workers: int, log) -> dict:
    """Resize table ``name`` of ``data_dir`` into the folder ``tmp``; its manifest entry."""
    from flyp.datasets import table_path
    from flyp.datasets.parquet import read_table, write_table

    source = table_path(data_dir, name)
    df = read_table(source)
    digest = source_hash(source)  # of the table just read and the files it names
    if "path" not in df.columns or "crop" in df.columns:
        raise UserError(
            f"{source}: a resized copy is made of a table of image files ('path' column) "
            f"without a border to crop at load time ('crop'); it has {list(df.columns)}"
        )
    folder = tmp / IMAGES / name
    for sub in sorted({image_folder(row) for row in range(len(df))}):
        (folder / sub).mkdir(parents=True)
    jobs = [
        (str(source.parent / rel), str(folder / image_folder(row) / f"{row:07d}"), side)
        for row, rel in enumerate(df["path"])
    ]
    written = _run_jobs(jobs, workers)
    for row, (_, _, error) in enumerate(written):
        if error is not None:
            raise UserError(
                f"{jobs[row][0]}: image {df['image_id'].iat[row]!r} of {source} is not a "
                f"readable image ({error})"
            )
    df["path"] = [f"{IMAGES}/{name}/{image_folder(r)}/{f}" for r, (f, _, _) in enumerate(written)]
    write_table(df, table_path(tmp, name))
    resized = sum(r for _, r, _ in written)
    log(
        f"{name}: {resized} of {len(df)} images resized to a shorter side of {side} px, the "
        f"others (as small already) copied"
    )
    return {
        "sha256": sha256_file(table_path(tmp, name)),
        "rows": len(df),
        "resized": resized,
        "source": digest,
    }


def _run_jobs(jobs: list, workers: int) -> list:
    """Each job through ``_resize_job``, in order; over ``workers`` processes when above 1."""
    if workers <= 1:
        return [_resize_job(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_resize_job, jobs, chunksize=64))


def write_resized_copy(
    data_dir: Path,
    out_dir: Path,
    side: int,
    *,
    tables: tuple[str, ...] = ("train",),
    workers: int = 1,
    log=print,
) -> None:
    """Write the resized copy of ``tables`` of ``data_dir`` into ``out_dir``: built in a folder
    beside it and renamed into place once complete (a copy already there is replaced then)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if side < 1:
        raise UserError(f"--side {side}: expected a positive number of pixels")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".resizing", dir=out_dir.parent))
    try:
        entries = {name: resize_table(data_dir, tmp, name, side, workers, log) for name in tables}
        manifest = {"format": FORMAT, "side": side, "quality": QUALITY, "tables": entries}
        write_json(tmp / MANIFEST, manifest)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it 0700
        _replace_folder(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _replace_folder(new: Path, target: Path) -> None:
    """Rename the folder ``new`` to ``target``, the previous ``target`` (if any) removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def source_hash(table: Path) -> str:
    """What a copy is a copy of: the table's SHA-256 and the path, size and modification time of
    every image file it names (as ``flyp.datasets.manifest.data_hash`` sees a path table)."""
    from flyp.datasets.manifest import referenced_files

    return sha256_json([sha256_file(table), referenced_files(table)])


def open_resized(train_dir: Path, data_dir: Path, name: str = "train") -> dict:
    """The manifest of the copy in ``train_dir``, checked to be a copy of table ``name`` as it is
    in ``data_dir`` now (``source_hash``: the table and its image files), else one line."""
    from flyp.datasets import table_path

    train_dir = Path(train_dir)
    found = (train_dir / MANIFEST).is_file()
    manifest = read_json(train_dir / MANIFEST) if found else {}
    if manifest.get("format") != FORMAT or name not in manifest.get("tables", {}):
        raise UserError(
            f"--train-data {train_dir}: not a resized copy of a {name} table "
            f"(`flyp resize` writes one)"
        )
    source = table_path(data_dir, name)
    if not source.is_file() or manifest["tables"][name]["source"] != source_hash(source):
        raise UserError(
            f"--train-data {train_dir}: made from another {source.name} (or other image files) "
            f"than the one in {data_dir} now; delete it and rerun (Snakemake remakes it)"
        )
    return manifest


def check_crop(manifest: dict, train_dir: Path, size: int | tuple | list) -> None:
    """Refuse a copy too small for the model's train crop (``size`` px): some crops would be
    enlarged from it where the full-size image gives a downsampled one."""
    size = max(size) if isinstance(size, list | tuple) else size
    need = crop_side_needed(size)
    if manifest["side"] < need:
        raise UserError(
            f"--train-data {train_dir}: images resized to a shorter side of {manifest['side']} "
            f"px, but the model's {size}-px train crop needs {need} px (train_resize >= {need})"
        )
