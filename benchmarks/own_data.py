"""How long your own data takes to list, hash and prepare: a generated folder of tiny images.

Writes ``--images`` PNG files (each the same 1x1 image, 69 bytes: listing, stat and header reads
cost what they cost for any image, decoding is never done here) in ``--classes`` class folders,
90% under ``train/``, 10% under ``test/``, plus an OOD set of 1% (``ood/shift/``), then times:

1. what the Snakefile does at parse time: ``get_benchmark(spec)`` (class folders only) and the
   fingerprint of every file's name, size and mtime (``OwnData.fingerprint``);
2. the prepare step, ``flyp prepare --benchmark SPEC`` as the workflow runs it (one process per
   ``--workers``), in a fresh process, so its start-up is counted.

    python benchmarks/own_data.py                      # 100,000 images, 100 classes
    python benchmarks/own_data.py --images 20000 --workers 1 2

The folder is written once into ``--workspace`` (a temporary folder unless given) and reused.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def write_folder(root: Path, images: int, classes: int) -> None:
    if (root / "done").is_file():
        return
    data = tiny_png()
    plan = {"train": images * 90 // 100, "test": images * 9 // 100, "ood/shift": images // 100}
    for split, n in plan.items():
        for i in range(n):
            folder = root / split / f"class_{i % classes:04d}"
            if i < classes:
                folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:07d}.png").write_bytes(data)
    (root / "done").write_text(json.dumps(plan))


def parse_time(spec: str) -> tuple[float, float]:
    from flyp.datasets import get_benchmark
    from flyp.datasets.owndata import from_spec

    t0 = time.perf_counter()
    get_benchmark(spec)
    t1 = time.perf_counter()
    from_spec(spec).fingerprint()
    return t1 - t0, time.perf_counter() - t1


def prepare_time(spec: str, out: Path, workers: int) -> float:
    cmd = ["flyp", "prepare", "--benchmark", spec, "--out", str(out), "--workers", str(workers)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workspace", type=Path)
    args = parser.parse_args()
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="flyp-own-data-"))
    root = workspace / f"images-{args.images}-{args.classes}"
    t0 = time.perf_counter()
    write_folder(root, args.images, args.classes)
    print(
        f"folder: {root} ({args.images} images, {args.classes} classes), "
        f"written or found in {time.perf_counter() - t0:.1f} s"
    )
    spec = json.dumps({"dataset": "imagefolder", "name": "bench", "root": str(root)})
    bench, fingerprint = parse_time(spec)
    print(f"parse time: get_benchmark {bench:.2f} s, fingerprint of every file {fingerprint:.2f} s")
    for workers in args.workers:
        out = workspace / f"tables-w{workers}"
        seconds = prepare_time(spec, out, workers)
        size = sum(f.stat().st_size for f in out.glob("*.parquet"))
        print(f"flyp prepare --workers {workers}: {seconds:.1f} s, tables {size / 1e6:.1f} MB")
    print(f"cpus: {os.cpu_count()}")


if __name__ == "__main__":
    main()
