"""Rendered SST2 (few-shot): movie-review sentences rendered as images, negative or positive.

OpenAI's ``rendered-sst2.tgz`` holds ``rendered-sst2/{train,valid,test}/{negative,positive}/*.png``;
the tables are those official splits (train 6,920, val 872, test 1,821). The paper's protocol is
few-shot (k images per class for training and k for validation, repeated over draws): that sample
is drawn from these tables by the finetuning step (``presets.sst2.fewshot`` in params.yaml).
"""

from __future__ import annotations

from pathlib import Path

from flyp.datasets import Benchmark, Download, EvalSet, register_benchmark
from flyp.datasets.rawdata import (
    class_folder_images,
    image_path,
    locate,
    write_image_table,
    write_split_record,
)

CLASSNAMES = ["negative", "positive"]  # label = index; the class folders have these names
TEMPLATES = ["a {} review of a movie."]
DOWNLOADS = [
    Download(
        "rendered_sst2",
        "https://openaipublic.azureedge.net/clip/data/rendered-sst2.tgz",
        md5="2384d08e9dcfa4bd55b324e610496ee5",
    )
]
SPLITS = {"train": "train", "val": "valid", "test": "test"}  # table -> folder


def prepare(out_dir: Path, *, raw_dir: str = "data/raw") -> None:
    """train/val/test tables of the official splits, from ``rendered-sst2/`` in
    ``raw_dir/rendered_sst2``."""
    out_dir = Path(out_dir)
    markers = [f"rendered-sst2/{folder}/{c}" for folder in SPLITS.values() for c in CLASSNAMES]
    root = locate(Path(raw_dir) / "rendered_sst2", markers, "sst2") / "rendered-sst2"
    sizes = {}
    for table, folder in SPLITS.items():
        files, labels = class_folder_images(root / folder, CLASSNAMES, "*.png")
        sizes[table] = write_image_table(
            out_dir / f"{table}.parquet",
            [f"{folder}/{f.parent.name}/{f.stem}" for f in files],
            labels,
            [image_path(f, out_dir) for f in files],
        )
    write_split_record(
        out_dir,
        {"benchmark": "sst2", "split": "official (folders)", "folders": SPLITS, "sizes": sizes},
    )


@register_benchmark("sst2")
def sst2_benchmark() -> Benchmark:
    return Benchmark(
        name="sst2",
        classnames=list(CLASSNAMES),
        templates=list(TEMPLATES),
        eval_sets=[EvalSet("test", ood=False, description="official Rendered SST2 test split")],
        prepare=prepare,
        downloads=list(DOWNLOADS),
        description="Rendered SST2: sentiment of rendered movie reviews (few-shot)",
    )
