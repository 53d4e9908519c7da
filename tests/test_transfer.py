"""Transfer and few-shot benchmarks (Caltech101, StanfordCars, Flowers102, Rendered SST2,
PatchCamelyon): labels and splits read from tiny copies of the official on-disk formats, seeded
splits that reproduce, the presets in params.yaml."""

import gzip
import inspect
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from scipy.io import savemat

from flyp.cli import main as cli
from flyp.datasets import caltech101, cars, flowers102, get_benchmark, pcam, sst2, table_path
from flyp.datasets.download import archive_filename, extract_archive
from flyp.datasets.rawdata import SPLITS_RECORD
from flyp.datasets.tables import ImageTable, read_table
from flyp.fixtures import get_fixture, transfer
from flyp.io import UserError
from flyp.workflow.config import load_params
from tests.conftest import ROOT


def image_bytes(value: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, fmt)
    return buf.getvalue()


def tables(out, names=("train", "val", "test")) -> dict[str, pd.DataFrame]:
    return {name: read_table(table_path(out, name)) for name in names}


def record(out) -> dict:
    return json.loads((out / SPLITS_RECORD).read_text())


def unpack_fixture(name: str, base):
    """(fixture, raw folder): the benchmark's fixture written under ``base/fixture``, each archive
    unpacked by the download step's ``extract_archive`` into ``base/raw/<download name>``."""
    fixture = get_fixture(name)(base / "fixture", np.random.default_rng(0))
    raw = base / "raw"
    for download in get_benchmark(name).downloads:
        extract_archive(
            fixture.sources[download.name],
            raw / download.name,
            inner_tars=download.inner_tars,
            progress=False,
            log=lambda _: None,
        )
    return fixture, raw


# ----------------------------------------------------------------------------------------------
# Caltech101: caltech-101.zip unpacks to caltech-101/101_ObjectCategories.tar.gz

PER_CLASS = transfer.CALTECH_PER_CLASS


@pytest.fixture(scope="module")
def caltech_raw(tmp_path_factory):
    return unpack_fixture("caltech101", tmp_path_factory.mktemp("caltech"))[1]


def test_caltech101_reads_the_inner_archive_and_splits_every_class(caltech_raw, tmp_path):
    out = tmp_path / "a"
    caltech101.prepare(out, raw_dir=str(caltech_raw), split_seed=0)
    t = tables(out)
    assert {k: len(v) for k, v in t.items()} == {"train": 303, "val": 101, "test": 101}
    ids = pd.concat(t.values())["image_id"]
    assert ids.is_unique and len(ids) == 101 * PER_CLASS  # disjoint, complete
    assert not ids.str.startswith(caltech101.EXCLUDED).any()
    for df in t.values():  # label = index of the class folder
        folders = df["image_id"].str.split("/").str[0]
        assert (folders.map(caltech101.FOLDERS.index) == df["label"]).all()
    assert sorted(t["val"]["label"]) == list(range(101))  # one val image per class
    assert caltech101.CLASSNAMES[caltech101.FOLDERS.index("Faces")] == "off-center face"
    assert ImageTable(table_path(out, "test")).load_image(0).size == transfer.IMAGE_SIZE
    assert (out / "images" / "101_ObjectCategories").is_dir()  # the zip's inner archive, unpacked
    assert record(out)["seed"] == 0 and record(out)["sizes"]["train"] == 303


def test_caltech101_split_is_reproducible_and_depends_on_the_seed(caltech_raw, tmp_path):
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        caltech101.prepare(tmp_path / name, raw_dir=str(caltech_raw), split_seed=seed)
    a, b, c = (tables(tmp_path / n) for n in "abc")
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert set(a["val"]["image_id"]) != set(c["val"]["image_id"])
    assert record(tmp_path / "c")["seed"] == 1


def test_caltech101_without_download_says_so(tmp_path):
    with pytest.raises(UserError, match="download"):
        caltech101.prepare(tmp_path / "out", raw_dir=str(tmp_path / "raw"))


# ----------------------------------------------------------------------------------------------
# StanfordCars: devkit .mat files in torchvision's layout


def annotations(rows) -> np.ndarray:
    """A MATLAB struct array like the devkit's (fields bbox_*, class, fname)."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    out = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (cls, fname) in enumerate(rows):
        out[0, i] = (0, 0, 7, 7, cls, fname)
    return out


CARS_TRAIN = [(c, f"{c:03d}{i}.jpg") for c in (1, 2, 196) for i in range(5)]  # 1-based classes
CARS_TEST = [(196, "00001.jpg"), (1, "00002.jpg"), (2, "00003.jpg"), (1, "00004.jpg")]


@pytest.fixture
def cars_raw(tmp_path):
    root = tmp_path / "raw" / "stanford_cars" / "source" / "stanford_cars"  # a linked folder
    (root / "devkit").mkdir(parents=True)
    savemat(
        root / "devkit" / "cars_meta.mat",
        {"class_names": np.array(cars.CLASSNAMES, dtype=object).reshape(1, -1)},
    )
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": annotations(CARS_TRAIN)})
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": annotations(CARS_TEST)})
    jpeg = image_bytes(50, "JPEG")
    for folder, rows in [("cars_train", CARS_TRAIN), ("cars_test", CARS_TEST)]:
        (root / folder).mkdir()
        for _, fname in rows:
            (root / folder / fname).write_bytes(jpeg)
    return tmp_path / "raw"


def test_cars_labels_from_the_devkit_and_a_seeded_val_split(cars_raw, tmp_path):
    cars.prepare(tmp_path / "a", raw_dir=str(cars_raw), split_seed=0)
    t = tables(tmp_path / "a")
    assert t["test"]["image_id"].tolist() == [f"cars_test/{f}" for _, f in CARS_TEST]
    assert t["test"]["label"].tolist() == [195, 0, 1, 0]  # devkit classes are 1-based
    train_val = pd.concat([t["train"], t["val"]])
    expected = {f"cars_train/{f}": c - 1 for c, f in CARS_TRAIN}
    assert dict(zip(train_val["image_id"], train_val["label"], strict=True)) == expected
    assert sorted(t["val"]["label"]) == [0, 1, 195]  # 20% of 5 per class
    assert cars.CLASSNAMES[195] == "smart fortwo Convertible 2012"
    cars.prepare(tmp_path / "b", raw_dir=str(cars_raw), split_seed=0)
    cars.prepare(tmp_path / "c", raw_dir=str(cars_raw), split_seed=3)
    assert tables(tmp_path / "b")["val"].equals(t["val"])
    assert set(tables(tmp_path / "c")["val"]["image_id"]) != set(t["val"]["image_id"])
    assert record(tmp_path / "c")["seed"] == 3


def test_cars_test_labels_may_sit_in_the_devkit(cars_raw, tmp_path):
    root = cars_raw / "stanford_cars" / "source" / "stanford_cars"
    shutil.move(root / "cars_test_annos_withlabels.mat", root / "devkit")
    cars.prepare(tmp_path / "out", raw_dir=str(cars_raw))
    assert len(tables(tmp_path / "out")["test"]) == len(CARS_TEST)
    (root / "devkit" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(UserError, match="cars_test_annos_withlabels.mat"):
        cars.prepare(tmp_path / "out2", raw_dir=str(cars_raw))


def test_cars_says_where_to_get_the_data(tmp_path):
    with pytest.raises(UserError, match="presets.cars.data.stanford_cars"):
        cars.prepare(tmp_path / "out", raw_dir=str(tmp_path / "raw"))
    assert get_benchmark("cars").downloads[0].url is None


def test_cars_refuses_other_class_names(cars_raw, tmp_path):
    names = list(cars.CLASSNAMES)
    names[3], names[4] = names[4], names[3]
    root = cars_raw / "stanford_cars" / "source" / "stanford_cars"
    savemat(
        root / "devkit" / "cars_meta.mat",
        {"class_names": np.array(names, dtype=object).reshape(1, -1)},
    )
    with pytest.raises(UserError, match="at label 3"):
        cars.prepare(tmp_path / "out", raw_dir=str(cars_raw))


# ----------------------------------------------------------------------------------------------
# Flowers102: jpg/ + imagelabels.mat + setid.mat, three downloads


def test_flowers102_official_splits_and_labels(tmp_path):
    raw = tmp_path / "raw"
    (raw / "flowers102_images" / "jpg").mkdir(parents=True)
    labels = [1, 102, 5, 5, 1, 102, 7, 3]  # 1-based class of image_0000<i+1>
    for i in range(len(labels)):
        (raw / "flowers102_images" / "jpg" / f"image_{i + 1:05d}.jpg").write_bytes(
            image_bytes(i, "JPEG")
        )
    (raw / "flowers102_labels").mkdir()
    savemat(raw / "flowers102_labels" / "imagelabels.mat", {"labels": np.array([labels])})
    (raw / "flowers102_setid").mkdir()
    savemat(
        raw / "flowers102_setid" / "setid.mat",
        {
            "trnid": np.array([[2, 1, 8]]),
            "valid": np.array([[3, 4]]),
            "tstid": np.array([[5, 6, 7]]),
        },
    )
    out = tmp_path / "out"
    flowers102.prepare(out, raw_dir=str(raw))
    t = tables(out)
    assert t["train"]["image_id"].tolist() == ["image_00002", "image_00001", "image_00008"]
    assert t["train"]["label"].tolist() == [101, 0, 2]
    assert t["val"]["label"].tolist() == [4, 4]
    assert t["test"]["label"].tolist() == [0, 101, 6]
    assert flowers102.CLASSNAMES[0] == "pink primrose"
    assert get_benchmark("flowers102").templates == ["a photo of a {}, a type of flower."]
    assert ImageTable(table_path(out, "test")).load_image(2).size == (8, 8)


# ----------------------------------------------------------------------------------------------
# Rendered SST2: rendered-sst2/{train,valid,test}/{negative,positive}/*.png


@pytest.fixture
def sst2_raw(tmp_path):
    root = tmp_path / "raw" / "rendered_sst2" / "rendered-sst2"
    counts = {"train": (3, 2), "valid": (1, 2), "test": (2, 1)}  # (negative, positive)
    png = image_bytes(255, "PNG")
    for folder, (neg, pos) in counts.items():
        for cls, n in [("negative", neg), ("positive", pos)]:
            (root / folder / cls).mkdir(parents=True)
            for i in range(n):
                (root / folder / cls / f"{folder}{cls}{i}.png").write_bytes(png)
    return tmp_path / "raw"


def test_sst2_labels_from_folders_and_official_splits(sst2_raw, tmp_path):
    out = tmp_path / "out"
    sst2.prepare(out, raw_dir=str(sst2_raw))
    t = tables(out)
    assert t["train"]["label"].tolist() == [0, 0, 0, 1, 1]
    assert t["val"]["label"].tolist() == [0, 1, 1]
    assert t["val"]["image_id"].iloc[0] == "valid/negative/validnegative0"
    assert t["test"]["label"].tolist() == [0, 0, 1]
    bench = get_benchmark("sst2")
    assert bench.classnames == ["negative", "positive"]
    assert bench.templates == ["a {} review of a movie."]
    assert record(out)["sizes"] == {"train": 5, "val": 3, "test": 3}


def test_flyp_prepare_cli_writes_tables_and_manifest(sst2_raw, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["prepare", "--benchmark", "sst2", "--out", str(out), "-o", f"raw_dir={sst2_raw}"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v["rows"] for k, v in manifest["tables"].items()} == {
        "train": 5,
        "val": 3,
        "test": 3,
    }


# ----------------------------------------------------------------------------------------------
# PatchCamelyon: HDF5 x (N, H, W, 3) and y (N, 1, 1, 1), one download per file

PCAM_SIZES = {"train": 10, "valid": 6, "test": 4}


@pytest.fixture
def pcam_raw(tmp_path):
    import h5py

    raw = tmp_path / "raw"
    offset = 0
    for split, n in PCAM_SIZES.items():
        x = np.stack([np.full((8, 8, 3), offset + i, np.uint8) for i in range(n)])
        y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        for xy, array in [("x", x), ("y", y)]:
            folder = raw / pcam.download_name(split, xy)
            folder.mkdir(parents=True)
            with h5py.File(folder / pcam.h5_name(split, xy), "w") as f:
                f.create_dataset(xy, data=array)
        offset += n
    return raw


def pixel(out, table, k) -> int:
    return int(np.asarray(ImageTable(table_path(out, table)).load_image(k))[0, 0, 0])


def test_pcam_writes_every_patch_with_its_label(pcam_raw, tmp_path):
    out = tmp_path / "out"
    pcam.prepare(out, raw_dir=str(pcam_raw))
    t = tables(out)
    assert {k: len(v) for k, v in t.items()} == {"train": 10, "val": 6, "test": 4}
    assert t["train"]["label"].tolist() == [0, 1] * 5
    assert [pixel(out, "test", k) for k in range(4)] == [16, 17, 18, 19]  # the test file's rows
    assert get_benchmark("pcam").templates == ["this is a photo of {}"]


def test_pcam_per_class_samples_are_seeded(pcam_raw, tmp_path):
    for name, seed in [("a", 0), ("b", 0), ("c", 5)]:
        pcam.prepare(
            tmp_path / name,
            raw_dir=str(pcam_raw),
            split_seed=seed,
            train_per_class=2,
            val_per_class=1,
        )
    a, b, c = (tables(tmp_path / n) for n in "abc")
    assert sorted(a["train"]["label"]) == [0, 0, 1, 1] and sorted(a["val"]["label"]) == [0, 1]
    assert len(a["test"]) == 4  # the test split is always whole
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert a["train"]["image_id"].tolist() != c["train"]["image_id"].tolist()
    for k, image_id in enumerate(a["train"]["image_id"]):  # each PNG is its HDF5 row
        assert pixel(tmp_path / "a", "train", k) == int(image_id.split("-")[1])
    assert record(tmp_path / "c")["seed"] == 5
    assert record(tmp_path / "c")["per_class"] == {"train": 2, "val": 1, "test": "all"}


def test_download_step_unpacks_single_file_downloads(tmp_path):
    """PCam's downloads are .h5.gz files and Flowers102's labels .mat files, not archives."""
    from flyp.datasets.download import extract_archive

    gz = tmp_path / "camelyonpatch_level_2_split_test_y.h5.gz"
    with gzip.open(gz, "wb") as f:
        f.write(b"HDF5 bytes")
    extract_archive(gz, tmp_path / "pcam_test_y", progress=False, log=lambda _: None)
    assert (tmp_path / "pcam_test_y" / gz.name[:-3]).read_bytes() == b"HDF5 bytes"
    mat = tmp_path / "setid.mat"
    savemat(mat, {"trnid": np.array([[1]])})
    extract_archive(mat, tmp_path / "flowers102_setid", progress=False, log=lambda _: None)
    assert (tmp_path / "flowers102_setid" / "setid.mat").read_bytes() == mat.read_bytes()
    other = tmp_path / "notes.bin"
    other.write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a tar or zip"):
        extract_archive(other, tmp_path / "x", progress=False, log=lambda _: None)


# ----------------------------------------------------------------------------------------------
# Presets

BENCHMARKS = ["iwildcam", "fmow", "caltech101", "cars", "flowers102", "sst2", "pcam"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_preset_validates_and_names_only_prepare_options_and_archives(name):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["benchmark"] = name
    run = load_params(params, ROOT / "workflow/schemas/params.schema.yaml")
    bench = get_benchmark(name)
    assert run["model"] == {"name": "ViT-B-16-quickgelu", "pretrained": "openai"}
    options = {
        k
        for k, p in inspect.signature(bench.prepare).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    archives = {d.name for d in bench.downloads}
    assert set(run["data"]) - archives <= options
    assert archives <= set(run["data"])  # every archive's source can be set


def test_presets_carry_the_papers_hyperparameters():
    presets = yaml.safe_load((ROOT / "params.yaml").read_text())["presets"]
    expected = {
        "iwildcam": (20, 1e-5, 0.2, 256, 500),
        "fmow": (20, 1e-5, 0.2, 256, 500),
        "caltech101": (100, 1e-5, 0.0, 256, 500),
        "cars": (100, 1e-5, 0.0, 256, 500),
        "sst2": (20, 1e-5, 0.2, 256, 0),
        "pcam": (20, 1e-6, 0.0, 256, 0),
    }
    for name, values in expected.items():
        ft = presets[name]["finetune"]
        got = tuple(ft[k] for k in ("epochs", "lr", "wd", "batch_size", "warmup_steps"))
        assert got == pytest.approx(values), name


# ----------------------------------------------------------------------------------------------
# Fixtures: miniatures in the real download formats, through extraction and prepare

FEWSHOT = {"sst2", "pcam"}  # the paper's few-shot benchmarks
MAX_SHOTS = 32  # the paper's largest k (SST2): k train and k val images per class


@pytest.mark.parametrize("name", ["caltech101", "cars", "flowers102", "sst2", "pcam"])
def test_fixture_unpacks_and_prepares_every_class_in_every_split(name, tmp_path):
    fixture, raw = unpack_fixture(name, tmp_path)
    bench = get_benchmark(name)
    assert set(fixture.sources) == {d.name for d in bench.downloads}
    for download in bench.downloads:
        if download.url:  # the same file name (hence format) as the real download
            assert fixture.sources[download.name].name == archive_filename(download)
    out = tmp_path / "out"
    bench.prepare(out, raw_dir=str(raw), **fixture.data)
    classes = set(range(len(bench.classnames)))
    for table, df in tables(out, bench.tables()).items():
        counts = df["label"].value_counts()
        assert set(counts.index) == classes, table  # every class, no label out of range
        if name in FEWSHOT and table in ("train", "val"):
            assert counts.min() >= MAX_SHOTS, table
        assert df["image_id"].is_unique
        assert ImageTable(table_path(out, table)).load_image(len(df) - 1).mode == "RGB"
