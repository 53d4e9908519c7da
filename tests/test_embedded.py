"""The embedded benchmark: deterministic, complete, with the splits and shifts it promises."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flyp.datasets import get_benchmark, table_path
from flyp.datasets.embedded import CLASSNAMES, DISTRIBUTIONS, make_table
from flyp.datasets.tables import read_table


def test_same_seed_gives_identical_bytes_whatever_the_worker_count():
    a = make_table("pretrain", 40, seed=3, workers=1)
    b = make_table("pretrain", 40, seed=3, workers=2, chunk=7)
    pd.testing.assert_frame_equal(a, b)
    c = make_table("pretrain", 40, seed=4, workers=1)
    assert not a["image"].equals(c["image"])


def test_benchmark_declares_id_and_five_ood_sets():
    bench = get_benchmark("embedded")
    assert bench.id_set.name == "test"
    assert [s.name for s in bench.ood_sets] == ["v2", "sketch", "r", "a", "objectnet"]
    assert len(bench.classnames) >= 10
    assert all(t.count("{}") == 1 for t in bench.templates)


def test_prepared_tables_have_images_labels_and_styles(tiny_tables):
    bench = get_benchmark("embedded")
    for name in bench.tables():
        df = read_table(table_path(tiny_tables, name))
        assert {"image_id", "label", "image"} <= set(df.columns)
        assert df["image_id"].is_unique
        assert df["label"].between(0, len(CLASSNAMES) - 1).all()
        image = Image.open(io.BytesIO(df["image"].iloc[0]))
        assert image.size == (32, 32)
    styles = {
        name: set(read_table(table_path(tiny_tables, name))["style"])
        for name in ["train", "sketch", "r", "pretrain"]
    }
    assert styles["train"] == {"photo"}
    assert styles["sketch"] == {"sketch"}
    assert styles["r"] <= {"cartoon", "painting", "pixel"} and len(styles["r"]) > 1
    assert len(styles["pretrain"]) >= 4


def test_sketches_are_grey_and_photos_are_coloured(tiny_tables):
    def saturation(name):
        df = read_table(table_path(tiny_tables, name))
        arr = np.stack([np.asarray(Image.open(io.BytesIO(b)), float) for b in df["image"][:20]])
        return (arr.max(-1) - arr.min(-1)).mean()

    assert saturation("sketch") < 0.3 * saturation("train")


def test_pretraining_captions_name_the_class_most_of_the_time(tiny_tables):
    df = read_table(table_path(tiny_tables, "pretrain"))
    pairs = zip(df["label"], df["caption"], strict=True)
    named = [CLASSNAMES[label] in text for label, text in pairs]
    assert 0.6 < np.mean(named) < 0.95  # synonyms and alt-text without the name exist too
    assert df["caption"].nunique() > len(df) // 3


def test_ood_distributions_differ_from_id():
    id_world = DISTRIBUTIONS["train"]
    for name in ["v2", "sketch", "r", "a", "objectnet"]:
        assert DISTRIBUTIONS[name] != id_world, name


def test_caption_noise_is_a_data_option(tmp_path):
    from flyp.datasets.embedded import PARTNERS, CaptionNoise, prepare
    from flyp.io import UserError

    clean = make_table("pretrain", 200, seed=0, noise=CaptionNoise(0.0, 0.0, 0.0))
    noisy = make_table("pretrain", 200, seed=0, noise=CaptionNoise(0.5, 0.0, 0.0))
    named = [
        sum(CLASSNAMES[label] in text for label, text in zip(t.label, t.caption, strict=True))
        for t in (clean, noisy)
    ]
    assert named[0] == 200 and 60 < named[1] < 140  # half the captions name another object
    assert (clean.image == noisy.image).all()  # the images do not depend on the captions
    confused = make_table("pretrain", 200, seed=0, noise=CaptionNoise(0.0, 0.0, 0.0, 1.0))
    partner = [PARTNERS[CLASSNAMES[label]] for label in confused.label]
    assert all(f" {name}" in text for name, text in zip(partner, confused.caption, strict=True))
    with pytest.raises(UserError, match="data option mislabelled: expected a fraction"):
        prepare(tmp_path, mislabelled=1.5)


def test_the_share_of_pretraining_sketches_is_a_data_option(tmp_path):
    from flyp.datasets.embedded import PRETRAIN_SKETCHES, prepare, pretrain_distribution
    from flyp.io import UserError

    assert pretrain_distribution(PRETRAIN_SKETCHES) is DISTRIBUTIONS["pretrain"]
    rare = pretrain_distribution(0.05)
    assert rare.styles["sketch"] == 0.05 and sum(rare.styles.values()) == pytest.approx(1)
    assert rare.styles["photo"] / rare.styles["cartoon"] == pytest.approx(2)  # the others' ratios
    styles = make_table("pretrain", 400, seed=0, dist=rare)["style"]
    default = make_table("pretrain", 400, seed=0)["style"]
    assert (styles == "sketch").sum() < 0.5 * (default == "sketch").sum()
    with pytest.raises(UserError, match="data option pretrain_sketches: expected a fraction"):
        prepare(tmp_path, pretrain_sketches=1.0)
