"""Images/s of the data path, old and new side by side in one run, on generated JPEGs of
ImageNet's typical size (about 400x350, quality 90) read from files as the real benchmarks are:

- old: open_clip's transforms end in a float32 tensor, normalised in the loader (602 KB an image
  at 224 px cross from a worker to the training process);
- new: the same crop and resize end in a uint8 tensor (150 KB), converted and normalised on the
  device (``flyp.models.normalise_images``; here the device is the CPU);
- eval cache: the eval transform's uint8 images written once (``flyp.evalcache``, what
  ``flyp evalcache`` writes per set) and read from the memory-mapped array, against decoding and
  transforming them (old and new path) for every evaluation;
- resized copy: train images/s per core (decode + seeded train crop, in the main process) from
  full-size JPEGs of ImageNet's sizes (500x375, 375x500, 500x333; a few 1024x768 and 1600x1200)
  against the copy ``flyp resize`` makes of them (shorter side ``--side``, JPEG quality 95), by
  the wall clock and by the process's CPU time.

    PYTHONPATH=. python benchmarks/data_path.py                  # 400 images, workers 0 and 1
    PYTHONPATH=. python benchmarks/data_path.py --images 100 --workers 0,2,4
    PYTHONPATH=. python benchmarks/data_path.py --only resized --side 273,256

Each (path, transform, workers) reads every image once after a warm-up batch; the main process
runs one torch thread (``--threads``), so workers 0 is images/s a core. Old and new alternate
``--repeats`` times and the best rate of each is printed (the CPUs may be shared).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from flyp.datasets.resized import write_resized_copy
from flyp.datasets.tables import ImageTable, write_table
from flyp.evalcache import CachedImages, write_images
from flyp.loading import make_loader, to_device
from flyp.models import normalise_images, preprocess_transforms
from flyp.training import SeededItems

# ViT-B/16's preprocessing (OpenAI's mean and std, 224 px, bicubic, shortest-side resize).
CFG = {
    "size": 224,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


def photo(rng: np.random.Generator, size=(400, 350)) -> Image.Image:
    """A photo-like image: smooth shapes plus sensor-like noise (JPEG sizes like ImageNet's)."""
    base = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).resize(
        size, Image.BICUBIC
    )
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(base) + noise, 0, 255).astype(np.uint8))


def jpeg_table(
    folder: Path, n: int, seed: int = 0, sizes=((400, 350),), name: str = "jpegs"
) -> Path:
    """``n`` JPEGs (quality 90), image i of ``sizes[i % len(sizes)]`` (width, height), and a
    path table ``<name>.parquet`` pointing at them; returns the table."""
    rng = np.random.default_rng(seed)
    (folder / "images" / name).mkdir(parents=True, exist_ok=True)
    paths = [f"images/{name}/{i}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        photo(rng, sizes[i % len(sizes)]).save(folder / path, quality=90)
    table = folder / f"{name}.parquet"
    write_table(
        pd.DataFrame(
            {"image_id": [str(i) for i in range(n)], "label": rng.integers(0, 10, n), "path": paths}
        ),
        table,
    )
    return table


def old_transforms(cfg: dict):
    """The transforms before this change: open_clip's, float32 and normalised."""
    pc = PreprocessCfg(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return image_transform_v2(pc, is_train=True), image_transform_v2(pc, is_train=False)


CPU = torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for the work queued on a GPU (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(
    table: Path,
    transform,
    workers: int,
    normalise: bool,
    batch_size: int,
    dataset=None,
    *,
    device=CPU,
    shuffle: bool = False,
    consume=None,
) -> float:
    """Every image of ``table`` (or of ``dataset``) through a loader to the consumer on
    ``device`` (normalised there if ``normalise``, then given to ``consume(images, labels)`` if
    set), after one warm-up batch (worker start-up is not counted). ``shuffle``: in a seeded
    random order (random access, as training reads)."""
    dataset = ImageTable(table, transform) if dataset is None else dataset
    mean = torch.tensor(CFG["mean"], device=device).view(-1, 1, 1)
    std = torch.tensor(CFG["std"], device=device).view(-1, 1, 1)
    loader = make_loader(
        dataset,
        batch_size=batch_size,
        workers=workers,
        device=device,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(0) if shuffle else None,
    )
    batches = iter(loader)
    next(batches)
    sync(device)
    start, count = time.perf_counter(), 0
    for images, labels in batches:
        images = to_device(images, device)
        if normalise:
            images = normalise_images(images, mean, std)
        if consume is not None:
            consume(images, labels)
        count += len(images)
    sync(device)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", default="0,1")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="old and new alternate; the fastest of each is kept (shared CPUs)",
    )
    parser.add_argument("--only", choices=["all", "transforms", "resized"], default="all")
    parser.add_argument("--side", default="273", help="the copy's shorter side(s), px")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only != "transforms":
        resized_figures(args)
    if args.only == "resized":
        return
    old_train, old_eval = old_transforms(CFG)
    new_train, new_eval = preprocess_transforms(CFG)
    with tempfile.TemporaryDirectory() as tmp:
        table = jpeg_table(Path(tmp), args.images + args.batch_size)
        size = sum(f.stat().st_size for f in (Path(tmp) / "images" / "jpegs").iterdir())
        print(
            f"{args.images} JPEGs of 400x350 (quality 90, mean {size / 1e3 / args.images:.0f}"
            f" KB), 224 px, batch {args.batch_size}, {args.threads} torch thread(s)"
        )
        print(f"{'transform':<10}{'workers':>8}{'old img/s':>11}{'new img/s':>11}{'ratio':>8}")
        for name, old, new in (("train", old_train, new_train), ("eval", old_eval, new_eval)):
            for workers in (int(w) for w in args.workers.split(",")):
                before = after = 0.0
                for _ in range(args.repeats):
                    torch.manual_seed(0)
                    before = max(
                        before, images_per_second(table, old, workers, False, args.batch_size)
                    )
                    torch.manual_seed(0)
                    after = max(
                        after, images_per_second(table, new, workers, True, args.batch_size)
                    )
                print(
                    f"{name:<10}{workers:>8}{before:>11.1f}{after:>11.1f}{after / before:>8.2f}",
                    flush=True,
                )
        eval_cache(table, Path(tmp), old_eval, new_eval, args)


def eval_cache(table: Path, folder: Path, old_eval, new_eval, args) -> None:
    """The eval figure of the cache: decoding and transforming every image (old and new path,
    workers 0: one core) against reading the cached uint8 images (always read in the main
    process: ``flyp.loading.make_loader``)."""
    start = time.perf_counter()
    write_images(
        ImageTable(table, new_eval), folder / "cache.npy", batch_size=args.batch_size, num_workers=0
    )
    made = (time.perf_counter() - start) * 1e3 / len(ImageTable(table))
    cached = CachedImages(np.load(folder / "cache.npy", mmap_mode="r"), ImageTable(table).df)
    old = new = read = raw = 0.0
    for _ in range(args.repeats):
        old = max(old, images_per_second(table, old_eval, 0, False, args.batch_size))
        new = max(new, images_per_second(table, new_eval, 0, True, args.batch_size))
        read = max(read, images_per_second(table, None, 0, True, args.batch_size, cached))
        raw = max(raw, images_per_second(table, None, 0, False, args.batch_size, cached))
    print(
        f"eval cache (made once: {made:.1f} ms an image), workers 0: old {old:.1f} img/s, "
        f"new {new:.1f} img/s, cache {read:.1f} img/s; cache/old {read / old:.1f}x, "
        f"cache/new {read / new:.1f}x; the cache's batches alone, not normalised (on a GPU "
        f"the device normalises): {raw:.1f} img/s",
        flush=True,
    )


# ImageNet's train JPEGs: most 500 px on the long side (500x375, 375x500, 500x333), a few larger
# (camera originals). How many are larger decides a mix's figure, so each group is shown too.
TYPICAL = ((500, 375), (375, 500), (500, 333))
LARGE = ((1024, 768), (1600, 1200))


def resized_figures(args) -> None:
    """Train images/s per core (decode + train transform at 224 px, in this process), full-size
    against the resized copy, per group of sizes and for a mix of 9 typical to 1 large; each
    rate the best run of about 20 images over ``--repeats`` alternating passes, by the wall clock
    and by this process's CPU time (steadier where other processes share the cores). Also what
    making the copy costs a source image (one process)."""
    new_train = preprocess_transforms(CFG)[0]
    sides = [int(s) for s in args.side.split(",")]
    groups = {
        "500x375, 375x500, 500x333": (TYPICAL, args.images),
        "1024x768, 1600x1200": (LARGE, max(20, args.images // 10)),
        "mix, 1 in 10 large": (TYPICAL * 3 + LARGE[:1] + TYPICAL * 3 + LARGE[1:], args.images),
    }
    print(
        f"train transform at 224 px, one core, {args.threads} torch thread(s); copy: shorter side"
        f" {', '.join(map(str, sides))} px, JPEG quality 95; img/s: wall clock | CPU time"
    )
    print(
        f"{'images':<27}{'n':>4}{'KB':>5}{'side':>5}{'KB':>4}{'make ms':>8}"
        f"{'full img/s':>15}{'copy img/s':>15}{'ratio':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, (sizes, n)) in enumerate(groups.items()):
            table = jpeg_table(Path(tmp), n, k, sizes, f"group{k}")
            chunk = len(sizes) * max(1, 20 // len(sizes))  # whole cycles of the sizes
            for side in sides:
                resized_row(table, label, side, new_train, args.repeats, chunk)


def decode_rates(table: Path, transform, chunk: int) -> tuple[float, float]:
    """(images/s by the wall clock, images/s of this process's CPU time) of reading and
    transforming the images of ``table`` (each crop seeded by its index), the best over runs of
    ``chunk`` images (a whole cycle of the sizes): the least disturbed by other processes."""
    items = SeededItems(ImageTable(table, transform))
    best_wall = best_cpu = 0.0
    for first in range(0, len(items) - chunk + 1, chunk):
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(first, first + chunk):
            items[i]
        best_wall = max(best_wall, chunk / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, chunk / max(time.process_time() - cpu, 1e-9))
    return best_wall, best_cpu


def resized_row(table: Path, label: str, side: int, transform, repeats: int, chunk: int) -> None:
    """One line of ``resized_figures``: make the copy of ``table``, then time both."""
    folder, name = table.parent, table.stem
    copy = folder / f"{name}-{side}"
    start = time.perf_counter()
    write_resized_copy(folder, copy, side, tables=(name,), log=lambda msg: None)
    made = (time.perf_counter() - start) * 1e3 / len(ImageTable(table))
    resized = copy / f"{name}.parquet"
    full, small = (0.0, 0.0), (0.0, 0.0)
    for _ in range(repeats):
        full = tuple(map(max, full, decode_rates(table, transform, chunk)))
        small = tuple(map(max, small, decode_rates(resized, transform, chunk)))
    kb = [
        np.mean([(t.parent / p).stat().st_size for p in ImageTable(t).df["path"]]) / 1e3
        for t in (table, resized)
    ]
    n = len(ImageTable(table))
    print(
        f"{label:<27}{n:>4}{kb[0]:>5.0f}{side:>5}{kb[1]:>4.0f}{made:>8.1f}"
        f"{full[0]:>8.1f}{full[1]:>7.1f}{small[0]:>8.1f}{small[1]:>7.1f}"
        f"{small[0] / full[0]:>6.2f}{small[1] / full[1]:>6.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
