"""The resized training copy (flyp/datasets/resized.py, `flyp resize`): what it writes, what it
refuses, and that the train crop sees the same crops from it as from the full-size images."""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from flyp.datasets.manifest import data_hash
from flyp.datasets.resized import (
    CROP_RATIO_MIN,
    CROP_SCALE_MIN,
    MANIFEST,
    QUALITY,
    check_crop,
    crop_side_needed,
    open_resized,
    resize_image,
    resized_size,
    write_resized_copy,
)
from flyp.datasets.tables import ImageTable, read_table, write_table
from flyp.io import UserError, read_json
from flyp.models import preprocess_transforms
from flyp.training import SeededItems
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from data_path import CFG, photo  # noqa: E402 (ViT-B/16's preprocessing; photo-like images)

SIDE = crop_side_needed(224)  # 273: the ImageNet preset's train_resize


def quiet(msg):
    pass


def path_table(folder: Path, images: dict[str, bytes]) -> Path:
    """train.parquet in ``folder`` naming ``images`` (file name -> bytes) under images/."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / "images" / name).write_bytes(data)
    df = pd.DataFrame(
        {
            "image_id": list(images),
            "label": np.arange(len(images)) % 3,
            "path": [f"images/{n}" for n in images],
            "region": "x",  # any other column travels with its row
        }
    )
    write_table(df, folder / "train.parquet")
    return folder / "train.parquet"


def encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def photos(sizes, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"{i}_{w}x{h}.jpg": encoded(photo(rng, (w, h))) for i, (w, h) in enumerate(sizes)}


# ----------------------------------------------------------------------------------------------
# The side the crop needs


def test_the_train_transform_crops_as_the_side_rule_assumes():
    """open_clip's train crop: area fraction from 0.9, aspect ratio from 3/4 (the constants
    crop_side_needed is derived from)."""
    crop = preprocess_transforms(CFG)[0].transforms[0]
    assert isinstance(crop, RandomResizedCrop)
    assert crop.scale[0] == CROP_SCALE_MIN and crop.ratio[0] == pytest.approx(CROP_RATIO_MIN)
    assert crop.ratio[1] == pytest.approx(1 / CROP_RATIO_MIN)


def test_at_the_side_needed_no_crop_box_is_smaller_than_the_crop():
    """The least box RandomResizedCrop cuts (area fraction 0.9, ratio 3/4, on a square image)
    is >= 224 px a side at 273 px and below it at 272 px."""
    assert crop_side_needed(224) == 273 and crop_side_needed(32) == 39

    def least_box(side):  # torchvision's own rounding of the box (get_params)
        area = side * side * CROP_SCALE_MIN
        return min(round(math.sqrt(area * CROP_RATIO_MIN)), round(math.sqrt(area / CROP_RATIO_MIN)))

    assert least_box(273) >= 224 > least_box(272)


# ----------------------------------------------------------------------------------------------
# The crop from the copy against the crop from the full-size image


def crop_boxes(width: int, height: int, n: int, seed: int) -> np.ndarray:
    """(n, 4) boxes of the train crop in relative coordinates: x0, y0, width, height."""
    image = Image.new("RGB", (width, height))
    torch.manual_seed(seed)
    boxes = [
        RandomResizedCrop.get_params(image, (CROP_SCALE_MIN, 1.0), (3 / 4, 4 / 3)) for _ in range(n)
    ]
    top, left, h, w = np.array(boxes, dtype=float).T
    return np.stack([left / width, top / height, w / width, h / height], axis=1)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (500, 333), (300, 300), (1600, 1200)])
def test_the_crop_boxes_have_the_same_distribution_in_image_coordinates(size):
    """The box the crop cuts, in the image's own coordinates (area fraction, aspect ratio,
    centre), is distributed the same in the full-size image and in the copy: the quantiles agree
    within the copy's pixel (1/273). At the needed side every box is >= 224 px a side."""
    small = resized_size(*size, SIDE)
    full, copy = crop_boxes(*size, 3000, 0), crop_boxes(*small, 3000, 1)
    q = [5, 25, 50, 75, 95]
    for stat in (
        lambda b: b[:, 2] * b[:, 3],  # area fraction
        lambda b: np.log(b[:, 2] / b[:, 3]),  # aspect ratio, relative to the image's
        lambda b: b[:, 0] + b[:, 2] / 2,  # centre
        lambda b: b[:, 1] + b[:, 3] / 2,
    ):
        assert np.percentile(stat(copy), q) == pytest.approx(np.percentile(stat(full), q), abs=0.01)
    assert (np.minimum(copy[:, 2] * small[0], copy[:, 3] * small[1]) >= 224 - 1e-6).all()


@pytest.fixture(scope="module")
def full_and_copy(tmp_path_factory):
    """Photo-like JPEGs of ImageNet's sizes and their copy at the needed side."""
    folder = tmp_path_factory.mktemp("photos")
    path_table(folder, photos([(500, 375), (375, 500), (640, 480), (1000, 750)]))
    write_resized_copy(folder, folder / "copy", SIDE, log=quiet)
    return folder / "train.parquet", folder / "copy" / "train.parquet"


def test_crops_from_the_copy_have_the_pixel_statistics_of_crops_from_the_full_images(
    full_and_copy,
):
    """32 seeded train crops of each image from either source: the crops' mean pixel value and
    spread agree within 0.5 levels and 1%, their fine detail (mean absolute difference of
    neighbouring pixels) within 8%: the copy's is 5.8% lower on these noisy images (resampled
    twice, chroma subsampled again); a copy at 200 px loses 11%, at 150 px 20%."""
    train = preprocess_transforms(CFG)[0]
    stats = []
    for table in full_and_copy:
        items = SeededItems(ImageTable(table, train))
        crops = []
        for seed in range(32):
            items.seed = seed
            crops += [items[i][0].float() for i in range(len(items))]
        crops = torch.stack(crops)  # (N, 3, 224, 224)
        assert crops.shape[1:] == (3, 224, 224)
        detail = (crops[..., 1:] - crops[..., :-1]).abs().mean().item()
        stats.append((crops.mean(dim=(2, 3)).mean(0), crops.std(dim=(2, 3)).mean(0), detail))
    (mean_full, std_full, detail_full), (mean_copy, std_copy, detail_copy) = stats
    assert torch.allclose(mean_copy, mean_full, atol=0.5), (mean_copy, mean_full)
    assert torch.allclose(std_copy, std_full, rtol=0.01), (std_copy, std_full)
    assert detail_copy == pytest.approx(detail_full, rel=0.08), (detail_copy, detail_full)


def test_the_same_box_from_the_copy_differs_by_a_few_levels(full_and_copy):
    """Resampling twice (and JPEG quality 95) moves the pixels of one box, cut from either
    source and resized to 224 px, by under 3 levels on average (measured: about 2)."""
    full, copy = (ImageTable(t) for t in full_and_copy)
    rng = np.random.default_rng(0)
    for i in range(len(full)):
        a, b = full.load_image(i), copy.load_image(i)
        sx, sy = b.width / a.width, b.height / a.height
        for _ in range(5):
            w, h = a.width * rng.uniform(0.8, 1), a.height * rng.uniform(0.8, 1)
            x, y = rng.uniform(0, a.width - w), rng.uniform(0, a.height - h)
            one = a.resize((224, 224), Image.BICUBIC, box=(x, y, x + w, y + h))
            two = b.resize(
                (224, 224), Image.BICUBIC, box=(x * sx, y * sy, (x + w) * sx, (y + h) * sy)
            )
            diff = np.abs(np.asarray(one, float) - np.asarray(two, float)).mean()
            assert 0 < diff < 3, (i, diff)


# ----------------------------------------------------------------------------------------------
# What the copy holds


def test_the_copy_cuts_the_shorter_side_and_copies_smaller_images_as_they_are(tmp_path):
    rgb = Image.new("RGB", (80, 60), (10, 200, 30))
    images = {
        "wide.jpg": encoded(rgb),
        "tall.JPEG": encoded(rgb.transpose(Image.Transpose.ROTATE_90)),
        "small.jpg": encoded(Image.new("RGB", (30, 50), (1, 2, 3))),
        "grey.png": encoded(Image.new("L", (100, 50), 90), "PNG"),
        "cmyk.jpg": encoded(Image.new("CMYK", (120, 45), (0, 50, 100, 0))),
    }
    table = path_table(tmp_path / "data", images)
    write_resized_copy(tmp_path / "data", tmp_path / "copy", 40, workers=1, log=quiet)
    source, copy = read_table(table), read_table(tmp_path / "copy" / "train.parquet")
    assert copy.drop(columns="path").equals(source.drop(columns="path"))
    sizes = {
        row.image_id: Image.open(tmp_path / "copy" / row.path).size for row in copy.itertuples()
    }
    assert sizes == {
        "wide.jpg": (53, 40),
        "tall.JPEG": (40, 53),
        "small.jpg": (30, 50),
        "grey.png": (80, 40),
        "cmyk.jpg": (107, 40),
    }
    small = copy.set_index("image_id").loc["small.jpg", "path"]
    assert (tmp_path / "copy" / small).read_bytes() == images["small.jpg"]  # byte for byte
    assert Image.open(tmp_path / "copy" / copy.path[0]).format == "JPEG"
    manifest = read_json(tmp_path / "copy" / MANIFEST)
    assert (manifest["side"], manifest["quality"]) == (40, QUALITY)
    assert manifest["tables"]["train"]["resized"] == 4 and manifest["tables"]["train"]["rows"] == 5
    loaded = ImageTable(tmp_path / "copy" / "train.parquet")
    assert all(loaded.load_image(i).mode == "RGB" for i in range(len(loaded)))
    data_hash(tmp_path / "copy")  # the copy is hashed as prepared tables are (provenance)

    write_resized_copy(tmp_path / "data", tmp_path / "copy2", 40, workers=2, log=quiet)
    for row in copy.itertuples():  # the same files over two worker processes
        assert (tmp_path / "copy2" / row.path).read_bytes() == (
            tmp_path / "copy" / row.path
        ).read_bytes()


def test_an_unreadable_image_is_one_line_naming_it_and_nothing_is_left(tmp_path):
    good = encoded(Image.new("RGB", (80, 60)))
    path_table(tmp_path / "data", {"a.jpg": good, "broken.jpg": good[: len(good) // 2]})
    with pytest.raises(UserError) as e:
        write_resized_copy(tmp_path / "data", tmp_path / "copy", 40, workers=2, log=quiet)
    message = str(e.value)
    assert "\n" not in message and "broken.jpg" in message and "not a readable image" in message
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no copy, no temporary folder


def test_a_copy_already_there_is_replaced_whole(tmp_path):
    path_table(tmp_path / "data", photos([(120, 90)]))
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "stale.txt").write_text("old")
    write_resized_copy(tmp_path / "data", tmp_path / "copy", 40, log=quiet)
    assert not (tmp_path / "copy" / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["copy", "data"]


def test_a_copy_of_other_data_or_too_small_for_the_crop_is_refused(tmp_path):
    data = tmp_path / "data"
    table = path_table(data, photos([(120, 90), (90, 120)]))
    write_resized_copy(data, tmp_path / "copy", 40, log=quiet)
    manifest = open_resized(tmp_path / "copy", data)
    check_crop(manifest, tmp_path / "copy", 32)  # 40 >= 39
    with pytest.raises(UserError, match=r"needs 273 px \(train_resize >= 273\)"):
        check_crop(manifest, tmp_path / "copy", (224, 224))

    image = data / read_table(table)["path"][0]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    with pytest.raises(UserError, match="made from another train.parquet .or other image files."):
        open_resized(tmp_path / "copy", data)  # an image file changed since
    write_resized_copy(data, tmp_path / "copy", 40, log=quiet)
    open_resized(tmp_path / "copy", data)
    write_table(read_table(table).iloc[:1], table)
    with pytest.raises(UserError, match="delete it and rerun"):
        open_resized(tmp_path / "copy", data)  # the table changed since
    with pytest.raises(UserError, match="not a resized copy"):
        open_resized(data, data)  # prepared tables are not a copy


def test_resize_image_returns_what_it_wrote(tmp_path):
    src = tmp_path / "a.jpeg"
    src.write_bytes(encoded(Image.new("RGB", (90, 60))))
    assert resize_image(src, tmp_path / "b", 40) == ("b.jpg", True)
    assert resize_image(src, tmp_path / "c", 60) == ("c.jpeg", False)
