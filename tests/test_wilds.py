"""iWildCam and FMoW: WILDS's splits, labels, class names and regions, read from tiny copies of the
official layouts (metadata CSVs and 8x8 images)."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from flyp.datasets import get_benchmark, table_path
from flyp.datasets.download import archive_filename, extract_archive, get_download
from flyp.datasets.rawdata import SPLITS_RECORD
from flyp.datasets.tables import ImageTable, read_table
from flyp.datasets.wilds import (
    FMOW_CATEGORIES,
    IWILDCAM_CATEGORIES,
    fmow_regions,
    fmow_tables,
    prepare_fmow,
    prepare_iwildcam,
)
from flyp.fixtures import get_fixture
from flyp.io import UserError
from flyp.scoring import score


def write_image(path, value: int, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, fmt)


# ----------------------------------------------------------------------------------------------
# iWildCam

# (WILDS split, label y) of each image in the fixture
IWILDCAM_ROWS = [
    ("train", 0),
    ("train", 24),
    ("train", 181),
    ("id_val", 24),
    ("id_test", 1),
    ("id_test", 2),
    ("test", 146),
    ("test", 0),
    ("val", 5),
]


@pytest.fixture
def iwildcam_raw(tmp_path):
    """raw/iwildcam/ as the download step leaves it: the archive's iwildcam_v2.0/ folder."""
    root = tmp_path / "raw" / "iwildcam" / "iwildcam_v2.0"
    root.mkdir(parents=True)
    cats = [
        {"y": y, "category_id": cid, "name": name.capitalize()}  # read lowercased
        for y, (cid, name, _) in enumerate(IWILDCAM_CATEGORIES)
    ]
    cats.append({"y": 99999, "category_id": 243, "name": "didelphis sp"})  # absent from WILDS
    pd.DataFrame(cats).to_csv(root / "categories.csv", index=False)
    meta = pd.DataFrame(
        [
            {
                "split": split,
                "filename": f"{i:03d}.jpg",
                "y": y,
                "image_id": f"img{i}",
                "location_remapped": i % 3,
                "datetime": "2013-06-01 12:00:00.000",
            }
            for i, (split, y) in enumerate(IWILDCAM_ROWS)
        ]
    )
    meta.to_csv(root / "metadata.csv", index=False)
    for i in range(len(IWILDCAM_ROWS)):
        write_image(root / "train" / f"{i:03d}.jpg", 10 * i, "JPEG")
    (root / "RELEASE_v2.0.txt").write_text("v2.0\n")
    return tmp_path / "raw"


def test_iwildcam_tables_follow_the_wilds_splits(iwildcam_raw, tmp_path):
    out = tmp_path / "tables"
    prepare_iwildcam(out, raw_dir=str(iwildcam_raw))
    expected = {
        "train": "train",
        "val": "id_val",
        "id_test": "id_test",
        "ood_test": "test",
        "ood_val": "val",
    }
    for table, split in expected.items():
        df = read_table(table_path(out, table))
        rows = [(f"img{i}", y) for i, (s, y) in enumerate(IWILDCAM_ROWS) if s == split]
        assert list(zip(df["image_id"], df["label"], strict=True)) == rows, table
        image = ImageTable(table_path(out, table)).load_image(0)  # paths resolve from out/
        assert image.size == (8, 8)
    record = json.loads((out / SPLITS_RECORD).read_text())
    assert record["sizes"] == {"train": 3, "val": 1, "id_test": 2, "ood_test": 2, "ood_val": 1}
    assert get_benchmark("iwildcam").tables() == list(expected)


def test_iwildcam_classes_are_the_182_of_categories_csv(iwildcam_raw, tmp_path):
    bench = get_benchmark("iwildcam")
    assert len(bench.classnames) == 182
    # prompts use the English names (lowercased) of the categories.csv label y
    assert bench.classnames[0] == "empty"
    assert bench.classnames[24] == "cattle cow bull"  # y 24: bos taurus
    assert bench.classnames[146] == "ocellated turkey"  # y 146: meleagris ocellata
    # a categories.csv whose names do not match the labels is refused
    path = iwildcam_raw / "iwildcam" / "iwildcam_v2.0" / "categories.csv"
    cats = pd.read_csv(path)
    cats.loc[cats["y"] == 24, "name"] = "ovis aries"
    cats.to_csv(path, index=False)
    with pytest.raises(UserError, match="label 24 is 'ovis aries'"):
        prepare_iwildcam(tmp_path / "tables", raw_dir=str(iwildcam_raw))


def test_iwildcam_reports_missing_images_and_missing_downloads(iwildcam_raw, tmp_path):
    (iwildcam_raw / "iwildcam" / "iwildcam_v2.0" / "train" / "006.jpg").unlink()
    with pytest.raises(UserError, match="1 image files missing"):
        prepare_iwildcam(tmp_path / "tables", raw_dir=str(iwildcam_raw))
    with pytest.raises(UserError, match="download"):
        prepare_iwildcam(tmp_path / "tables", raw_dir=str(tmp_path / "nothing"))


def test_iwildcam_is_scored_with_macro_f1():
    bench = get_benchmark("iwildcam")
    assert [(s.name, s.ood, s.metric) for s in bench.eval_sets] == [
        ("id_test", False, "macro_f1"),
        ("ood_test", True, "macro_f1"),
    ]
    assert bench.templates == ["a photo of {}.", "{} in the wild."]


# ----------------------------------------------------------------------------------------------
# FMoW

# (split column, timestamp, country code, category, table expected); row i is rgb_img_<i>.png
FMOW_ROWS = [
    ("train", "2010-05-01T10:00:00Z", "USA", "airport", "train"),
    ("train", "2014-05-01T10:00:00.123Z", "FRA", "zoo", None),  # OOD years: in no split
    ("seq", "2011-01-01T00:00:00Z", "USA", "dam", None),  # sequestered
    ("val", "2012-12-31T23:59:59Z", "KEN", "barn", "val"),  # WILDS id_val
    ("val", "2013-01-01T00:00:00Z", "FRA", "park", "ood_val"),  # WILDS val (OOD)
    ("val", "2016-06-01T00:00:00Z", "USA", "port", None),
    ("test", "2005-03-03T03:03:03Z", "XXX", "tower", "id_test"),  # unknown country: Other
    ("test", "2015-12-31T23:59:59Z", "CHN", "prison", None),
    ("test", "2016-01-01T00:00:00Z", "CHN", "runway", "ood_test"),  # WILDS test: 2016 on
    ("test", "2017-02-02T02:02:02.500Z", "AUS", "stadium", "ood_test"),
    ("test", "2016-07-07T07:07:07Z", "ATA", "tower", "ood_test"),  # mapped, empty region: "nan"
    ("test", "2017-08-08T08:08:08Z", "XXX", "park", "ood_test"),  # unknown country: Other
]
COUNTRY_REGIONS = {
    "USA": "Americas",
    "FRA": "Europe",
    "KEN": "Africa",
    "CHN": "Asia",
    "AUS": "Oceania",
    "ATA": None,
}


def fmow_meta() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"split": s, "timestamp": t, "country_code": c, "category": cat}
            for s, t, c, cat, _ in FMOW_ROWS
        ]
    )


@pytest.fixture
def fmow_raw(tmp_path):
    root = tmp_path / "raw" / "fmow" / "fmow_v1.1"
    root.mkdir(parents=True)
    fmow_meta().to_csv(root / "rgb_metadata.csv", index=False)
    pd.DataFrame(
        {
            "name": list(COUNTRY_REGIONS),
            "alpha-3": list(COUNTRY_REGIONS),
            "region": list(COUNTRY_REGIONS.values()),
        }
    ).to_csv(root / "country_code_mapping.csv", index=False)
    for i in range(len(FMOW_ROWS)):
        write_image(root / "images" / f"rgb_img_{i}.png", 20 * i)
    (root / "RELEASE_v1.1.txt").write_text("v1.1\n")
    return tmp_path / "raw"


def test_fmow_splits_by_year_as_wilds_defines_them():
    tables = fmow_tables(fmow_meta())
    assert tables.tolist() == [t for *_, t in FMOW_ROWS]


def test_fmow_regions_from_country_codes():
    mapping = pd.DataFrame(
        {"alpha-3": list(COUNTRY_REGIONS), "region": list(COUNTRY_REGIONS.values())}
    )
    regions = fmow_regions(pd.Series(["USA", "XXX", "ATA", "KEN", None]), mapping)
    # WILDS: a country the mapping gives no region is a region of its own (NaN, named "nan");
    # a code the mapping lacks is "Other"
    assert regions.tolist() == ["Americas", "Other", "nan", "Africa", "Other"]


def test_fmow_tables_carry_labels_regions_and_the_right_images(fmow_raw, tmp_path):
    out = tmp_path / "tables"
    prepare_fmow(out, raw_dir=str(fmow_raw))
    for table in get_benchmark("fmow").tables():
        df = read_table(table_path(out, table))
        rows = [i for i, r in enumerate(FMOW_ROWS) if r[-1] == table]
        assert df["image_id"].tolist() == [f"rgb_img_{i}" for i in rows], table
        assert df["label"].tolist() == [FMOW_CATEGORIES.index(FMOW_ROWS[i][3]) for i in rows]
        assert df["year"].tolist() == [int(FMOW_ROWS[i][1][:4]) for i in rows]
        dataset = ImageTable(table_path(out, table))
        for k, i in enumerate(rows):  # each image is the one of its metadata row
            assert np.asarray(dataset.load_image(k))[0, 0, 0] == 20 * i
    ood = read_table(table_path(out, "ood_test"))
    assert ood["region"].tolist() == ["Asia", "Oceania", "nan", "Other"]
    assert read_table(table_path(out, "id_test"))["region"].tolist() == ["Other"]
    assert read_table(table_path(out, "val"))["region"].tolist() == ["Africa"]


def test_fmow_ood_test_is_scored_on_its_worst_region(fmow_raw, tmp_path):
    out = tmp_path / "tables"
    prepare_fmow(out, raw_dir=str(fmow_raw))
    bench = get_benchmark("fmow")
    assert [(s.name, s.ood, s.metric) for s in bench.eval_sets] == [
        ("id_test", False, "accuracy"),
        ("ood_test", True, "worst_region_accuracy"),
    ]
    df = read_table(table_path(out, "ood_test"))  # Asia, Oceania, nan, Other
    labels = torch.tensor(df["label"].to_numpy())
    logits = torch.nn.functional.one_hot(labels, len(FMOW_CATEGORIES)).float()
    logits[1] = logits[1].roll(1)  # the Oceania image is wrong; the "Other" one does not count
    logits[3] = logits[3].roll(1)
    assert score(logits, labels, bench.eval_set("ood_test"), df) == 0.0
    logits[1] = logits[1].roll(-1)
    assert score(logits, labels, bench.eval_set("ood_test"), df) == 1.0
    logits[2] = logits[2].roll(1)  # the image of the country with no region counts, as in WILDS
    assert score(logits, labels, bench.eval_set("ood_test"), df) == 0.0


def test_fmow_id_test_is_scored_with_average_accuracy():
    """WILDS and the reference report FMoW's ID column as average accuracy: with one region all
    wrong and the others right, ID scores the mean, OOD the worst region."""
    bench = get_benchmark("fmow")
    table = pd.DataFrame({"region": ["Asia", "Asia", "Europe", "Africa"]})
    labels = torch.tensor([0, 1, 2, 3])
    logits = torch.nn.functional.one_hot(labels, len(FMOW_CATEGORIES)).float()
    logits[3] = logits[3].roll(1)  # the Africa image is wrong
    assert score(logits, labels, bench.eval_set("id_test"), table) == 0.75
    assert score(logits, labels, bench.eval_set("ood_test"), table) == 0.0


# The reference's 16 FMoW templates (locuslab/FLYP src/templates/fmow_template.py); "{a}": the
# name after its article, underscores as spaces; "{}": the name as it is (underscores kept).
REFERENCE_FMOW_TEMPLATES = [
    "satellite photo of a {}.",
    "aerial photo of a {}.",
    "satellite photo of {a}.",
    "aerial photo of {a}.",
    *[
        f"{kind} photo of a {{}} in {region}."
        for region in ["asia", "africa", "the americas", "europe", "oceania"]
        for kind in ["satellite", "aerial"]
    ],
    "a photo of a {}.",
    "{}.",
]


def reference_fmow_prompt(template: str, name: str) -> str:
    spaced = name.replace("_", " ")
    article = "an" if spaced[0] in "aeiou" else "a"
    return template.replace("{a}", f"{article} {spaced}").replace("{}", name)


def test_fmow_templates_render_class_names_as_the_reference():
    bench = get_benchmark("fmow")
    assert len(bench.templates) == 16
    for name in bench.classnames:
        assert [t.format(name) for t in bench.templates] == [
            reference_fmow_prompt(t, name) for t in REFERENCE_FMOW_TEMPLATES
        ], name
    hangar = [t.format("airport_hangar") for t in bench.templates]
    assert hangar[:4] == [
        "satellite photo of a airport_hangar.",
        "aerial photo of a airport_hangar.",
        "satellite photo of an airport hangar.",
        "aerial photo of an airport hangar.",
    ]
    assert (
        bench.templates[3].format("multi-unit_residential")
        == "aerial photo of a multi-unit residential."
    )


def test_fmow_flyp_captions_and_zero_shot_prompts_pick_the_article(tmp_path):
    """The templates survive the captions tables (FLYP's captions) and open_clip's zero-shot
    head, both of which fill them in with ``format``."""
    import open_clip

    from flyp.captions import make_caption_tables
    from flyp.methods.flyp import load_caption_bank

    bench = get_benchmark("fmow")
    train = tmp_path / "train.parquet"
    pd.DataFrame({"image_id": ["a", "b"], "label": [1, 61], "path": ["a.png", "b.png"]}).to_parquet(
        train
    )
    make_caption_tables(bench, train, tmp_path / "captions.parquet", tmp_path / "templates.parquet")
    seen = []

    def tokenizer(texts):
        seen.extend(texts)
        return torch.zeros(len(texts), 3, dtype=torch.long)

    ctx = SimpleNamespace(benchmark=bench, captions_dir=tmp_path, tokenizer=tokenizer)
    load_caption_bank(ctx, ["a", "b"])
    assert "satellite photo of an airport hangar." in seen
    assert "aerial photo of a zoo." in seen
    assert not any("of airport_hangar" in t for t in seen)

    class TextTower(torch.nn.Module):
        def encode_text(self, tokens, normalize=False):
            return torch.ones(len(tokens), 2)

    seen.clear()
    open_clip.build_zero_shot_classifier(
        TextTower(), tokenizer, ["airport_hangar"], bench.templates, num_classes_per_batch=None
    )
    assert seen == [reference_fmow_prompt(t, "airport_hangar") for t in REFERENCE_FMOW_TEMPLATES]


# ----------------------------------------------------------------------------------------------
# The fixtures: miniatures of the real downloads, through the real extraction and prepare code


def prepared_fixture(name: str, tmp_path):
    """The fixture of ``name`` (seed 0), extracted into tmp_path/raw and prepared into
    tmp_path/tables as the pipeline does; returns the fixture and the tables' folder."""
    bench = get_benchmark(name)
    fixture = get_fixture(name)(tmp_path / "fixture", np.random.default_rng(0))
    extract_archive(
        fixture.sources[name],
        tmp_path / "raw" / name,
        inner_tars=get_download(bench, name).inner_tars,
        progress=False,
        log=lambda _: None,
    )
    out = tmp_path / "tables"
    bench.prepare(out, raw_dir=str(tmp_path / "raw"), **fixture.data)
    return fixture, out


@pytest.mark.parametrize("name", ["iwildcam", "fmow"])
def test_fixture_extracts_and_prepares_into_every_split(name, tmp_path):
    bench = get_benchmark(name)
    fixture, out = prepared_fixture(name, tmp_path)
    archive = fixture.sources[name]
    assert list(fixture.sources) == [d.name for d in bench.downloads]
    # a gzip tar named as the codalab download is saved (its URL names no file)
    download = get_download(bench, name)
    assert archive.name == archive_filename(download) and archive.read_bytes()[:2] == b"\x1f\x8b"
    n_classes = {"iwildcam": 182, "fmow": 62}[name]
    assert len(bench.classnames) == n_classes
    tables = {t: read_table(table_path(out, t)) for t in bench.tables()}
    for table, df in tables.items():
        assert len(df) > 0 and df["label"].between(0, n_classes - 1).all(), table
        if table != "train":  # about half the classes in each evaluation split
            assert df["label"].nunique() >= n_classes // 2, table
    assert set(tables["train"]["label"]) == set(range(n_classes))
    assert ImageTable(table_path(out, "ood_test")).load_image(0).size == (8, 8)
    if name == "fmow":
        for table in ["val", "id_test", "ood_val", "ood_test"]:
            assert set(tables[table]["region"]) == {
                "Africa",
                "Americas",
                "Asia",
                "Europe",
                "Oceania",
                "nan",
                "Other",
            }, table
        assert (tables["ood_test"]["year"] >= 2016).all()
        assert (tables["id_test"]["year"] < 2013).all()
    else:  # the OOD splits are at camera traps of their own
        id_traps = set(tables["train"]["location"])
        assert not id_traps & set(tables["ood_test"]["location"])
        assert set(tables["id_test"]["location"]) <= id_traps


def test_the_fmow_fixtures_country_with_no_region_is_a_region_worst_region_accuracy_scores(
    tmp_path,
):
    """The fixture's country_code_mapping.csv leaves Antarctica's region empty, as the real one
    does; as in WILDS, its images are a region of their own ("nan") that worst-region accuracy
    scores, while "Other" (codes the mapping lacks) is left out."""
    _, out = prepared_fixture("fmow", tmp_path)
    (mapping,) = (tmp_path / "raw" / "fmow").rglob("country_code_mapping.csv")
    empty = pd.read_csv(mapping, keep_default_na=False).query("region == ''")
    assert empty["alpha-3"].tolist() == ["ATA"]
    df = read_table(table_path(out, "ood_test"))
    assert (df["region"] == "nan").sum() > 0 and (df["region"] == "Other").sum() > 0
    labels = torch.tensor(df["label"].to_numpy())
    ood = get_benchmark("fmow").eval_set("ood_test")

    def accuracy_with_wrong(region: str) -> float:
        logits = torch.nn.functional.one_hot(labels, len(FMOW_CATEGORIES)).float()
        wrong = torch.tensor((df["region"] == region).to_numpy())
        logits[wrong] = logits[wrong].roll(1, dims=1)
        return score(logits, labels, ood, df)

    assert accuracy_with_wrong("nan") == 0.0  # a region like Asia or Europe
    assert accuracy_with_wrong("Asia") == 0.0
    assert accuracy_with_wrong("Other") == 1.0  # left out


def test_fixtures_are_the_same_for_the_same_seed(tmp_path):
    for name in ["iwildcam", "fmow"]:
        a, b = (
            get_fixture(name)(tmp_path / d, np.random.default_rng(1)).sources[name] for d in "ab"
        )
        assert a.read_bytes() == b.read_bytes(), name
