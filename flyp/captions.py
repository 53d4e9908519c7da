"""The finetuning caption tables (FLYP): which class name and template set each training image uses.

``captions.parquet``: one row per training image (image_id, label, classname, template_set).
``templates.parquet``: one row per template (template_set, template_id, template).
A caption is a template filled with the class name, sampled per image at training time.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flyp.datasets import Benchmark
from flyp.datasets.parquet import read_table, write_table


def make_caption_tables(
    benchmark: Benchmark, train_table: Path, captions_out: Path, templates_out: Path
) -> None:
    train = read_table(train_table, columns=["image_id", "label"])
    template_set = benchmark.name
    captions = pd.DataFrame(
        {
            "image_id": train["image_id"],
            "label": train["label"].astype("int64"),
            "classname": [benchmark.classnames[i] for i in train["label"]],
            "template_set": template_set,
        }
    )
    templates = pd.DataFrame(
        {
            "template_set": template_set,
            "template_id": range(len(benchmark.templates)),
            "template": benchmark.templates,
        }
    )
    write_table(templates, templates_out)
    write_table(captions, captions_out)
