"""Your own data (flyp/datasets/owndata.py): a folder of class folders or a CSV becomes a benchmark
that every step takes by its spec, a preset declares with no code, and whose prepare step reruns
when an image changes. Bad input: tests/test_bad_input.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from flyp.cli import main
from flyp.datasets import get_benchmark
from flyp.datasets.owndata import from_spec
from flyp.datasets.parquet import read_table
from flyp.io import UserError
from flyp.scoring import METRICS
from flyp.workflow.config import load_params, prepare_options, read_yaml
from tests.conftest import ROOT

SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"


def png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)
    return path


def make_folder(root: Path, classes=("cat", "dog", "sea_lion"), train=10, test=2, ood=("night",)):
    for c in classes:
        for i in range(train):
            png(root / "train" / c / f"{i}.png", i)
        for i in range(test):
            png(root / "test" / c / f"{i}.png", i)
            for name in ood:
                png(root / "ood" / name / c / f"{i}.png", i)
    return root


def spec(root: Path, **extra) -> str:
    return json.dumps({"dataset": "imagefolder", "name": "mine", "root": str(root), **extra})


def prepare(spec_text: str, out: Path, *options: str):
    return CliRunner().invoke(
        main, ["prepare", "--benchmark", spec_text, "--out", str(out), *options]
    )


def test_a_folder_becomes_a_benchmark_with_its_classes_and_ood_sets(tmp_path):
    root = make_folder(tmp_path / "images", ood=("night", "fog"))
    bench = get_benchmark(spec(root))
    assert bench.name == "mine"
    assert bench.classnames == ["cat", "dog", "sea lion"]  # underscores as spaces
    assert [(s.name, s.ood, s.metric) for s in bench.eval_sets] == [
        ("test", False, "accuracy"),
        ("fog", True, "accuracy"),
        ("night", True, "accuracy"),
    ]
    assert len(bench.templates) == 80 and all("{}" in t for t in bench.templates)  # OpenAI's


def test_prepare_writes_path_tables_whose_labels_match_the_folders(tmp_path):
    root = make_folder(tmp_path / "images")
    (root / "train" / "cat" / "readme.txt").write_text("not an image")
    out = tmp_path / "tables"
    result = prepare(spec(root), out, "-o", "val_fraction=0.2")
    assert result.exit_code == 0, result.output
    tables = {n: read_table(out / f"{n}.parquet") for n in ("train", "val", "test", "night")}
    assert [len(t) for t in tables.values()] == [24, 6, 6, 6]  # 2 of each class's 10 in val
    classes = ["cat", "dog", "sea_lion"]
    for table in tables.values():
        assert "image" not in table.columns  # paths, no image bytes
        for _, row in table.iterrows():
            assert (out / row["path"]).resolve() == (root / row["image_id"]).resolve()
            assert classes[row["label"]] == Path(row["image_id"]).parent.name
    assert set(tables["train"]["image_id"]).isdisjoint(tables["val"]["image_id"])
    record = json.loads((out / "splits.json").read_text())
    assert record["skipped_files"] == 1 and record["classes"] == classes


def test_the_val_sample_is_seeded_and_a_val_folder_is_used_as_it_is(tmp_path):
    root = make_folder(tmp_path / "images")
    vals = []
    for seed, out in [(0, "a"), (0, "b"), (1, "c")]:
        assert (
            prepare(spec(root), tmp_path / out, "-o", f"seed={seed}", "-o", "val_size=6").exit_code
            == 0
        )
        vals.append(sorted(read_table(tmp_path / out / "val.parquet")["image_id"]))
    assert len(vals[0]) == 6 and vals[0] == vals[1] != vals[2]
    png(root / "val" / "dog" / "v.png")
    png(root / "val" / "cat" / "v.png")
    assert prepare(spec(root), tmp_path / "d").exit_code == 0
    assert list(read_table(tmp_path / "d" / "val.parquet")["image_id"]) == [
        "val/cat/v.png",
        "val/dog/v.png",
    ]
    assert len(read_table(tmp_path / "d" / "train.parquet")) == 30


def test_a_csv_with_groups_names_its_sets_and_classes(tmp_path):
    rows = [["path", "label", "split", "group"]]
    for split, n in [("train", 6), ("val", 2), ("test", 2), ("sunset", 2)]:
        for label in ("10", "2"):
            for i in range(n):
                png(tmp_path / "img" / f"{split}-{label}-{i}.png")
                rows.append([f"img/{split}-{label}-{i}.png", label, split, f"g{i % 2}"])
    pd.DataFrame(rows[1:], columns=rows[0]).to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "names.json").write_text('{"2": "two", "10": "ten"}')
    text = json.dumps(
        {
            "dataset": "csv",
            "name": "c",
            "csv": str(tmp_path / "data.csv"),
            "classnames": str(tmp_path / "names.json"),
            "metric": "worst_group",
        }
    )
    bench = get_benchmark(text)
    assert bench.classnames == ["two", "ten"]  # integer labels in numeric order
    assert [(s.name, s.metric) for s in bench.eval_sets] == [
        ("test", "worst_group_accuracy"),
        ("sunset", "worst_group_accuracy"),
    ]
    assert prepare(text, tmp_path / "t").exit_code == 0
    test = read_table(tmp_path / "t" / "test.parquet")
    assert list(test["group"]) == ["g0", "g1", "g0", "g1"]
    assert list(test["label"]) == [1, 1, 0, 0]  # "10" is class 1


def test_worst_group_accuracy_is_the_lowest_groups():
    logits = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    labels = torch.tensor([0, 0, 0, 1])
    table = pd.DataFrame({"group": ["a", "a", "b", "b"]})
    assert METRICS["worst_group_accuracy"](logits, labels, table) == 0.5


def test_templates_and_classnames_files(tmp_path):
    root = make_folder(tmp_path / "images")
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\nart of the {}\n")
    (tmp_path / "n.csv").write_text("label,name\ncat,house cat\ndog,dog\nsea_lion,sea lion\n")
    bench = get_benchmark(
        spec(root, templates=str(tmp_path / "t.txt"), classnames=str(tmp_path / "n.csv"))
    )
    assert bench.templates == ["a photo of a {}.", "art of the {}"]
    assert bench.classnames == ["house cat", "dog", "sea lion"]


def test_the_fingerprint_follows_every_image(tmp_path):
    root = make_folder(tmp_path / "images")
    source = from_spec(spec(root))
    before = source.fingerprint()
    assert source.fingerprint() == before
    png(root / "test" / "dog" / "new.png")
    added = source.fingerprint()
    assert added != before
    os.utime(root / "test" / "dog" / "new.png", ns=(1, 1))
    assert source.fingerprint() != added


def own_params(root: Path, **data) -> dict:
    params = read_yaml(ROOT / "params.yaml")
    params["presets"]["mine"] = {"dataset": "imagefolder", "data": {"root": str(root), **data}}
    params["benchmark"] = "mine"
    return params


def test_a_preset_that_names_a_folder_takes_the_own_data_defaults(tmp_path):
    root = make_folder(tmp_path / "images")
    run = load_params(own_params(root, val_size=3), SCHEMA)
    assert run["model"] == {"name": "ViT-B-16-quickgelu", "pretrained": "openai"}
    assert run["finetune"]["lr"] == 1.0e-5 and run["features"]["normalize"] is False
    assert json.loads(run["benchmark_spec"]) == {
        "dataset": "imagefolder",
        "name": "mine",
        "root": str(root),
    }
    bench = get_benchmark(run["benchmark_spec"])
    assert prepare_options(run, bench) == {"val_size": 3}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {}}, r"presets\.mine\.data: 'root' is a required property"),
        ({"data": {"root": "x", "roots": 1}}, r"presets\.mine\.data: .*'roots' was unexpected"),
        ({"data": {"root": "x", "metric": "f1"}}, r"presets\.mine\.data\.metric: 'f1' is not one"),
        ({"dataset": "folder"}, r"presets\.mine\.dataset: 'folder' is not one of"),
        ({"model": {"pretrained": None}}, r"presets\.mine\.model\.pretrained: a dataset preset"),
    ],
)
def test_a_bad_own_data_preset_is_one_line(tmp_path, change, message):
    params = own_params(tmp_path)
    params["presets"]["mine"].update(change)
    with pytest.raises(UserError, match=message) as e:
        load_params(params, SCHEMA)
    assert "\n" not in str(e.value)


def test_the_fixture_writes_a_folder_and_a_csv_that_prepare(tmp_path):
    for kind in ("imagefolder", "csv"):
        from flyp.fixtures.owndata import make_own_data_fixture

        overlay = yaml.safe_load(make_own_data_fixture(kind, tmp_path / kind).read_text())
        preset = overlay["presets"][overlay["benchmark"]]
        data = preset["data"]
        key = "root" if kind == "imagefolder" else "csv"
        text = json.dumps(
            {"dataset": kind, "name": "x", key: data[key], "metric": data.get("metric", "accuracy")}
        )
        bench = get_benchmark(text)
        assert [s.name for s in bench.ood_sets] == ["renditions", "sketch"]
        assert len(bench.classnames) == 12
        assert Path(preset["model"]["pretrained"]).is_file()


@pytest.mark.slow
def test_an_added_image_reruns_prepare_and_what_follows(tmp_path):
    """prepare_data's params carry the images' fingerprint: after a new image, snakemake reruns
    it (and so, by their inputs, every step after it)."""
    root = make_folder(tmp_path / "images")
    overlay = tmp_path / "mine.yaml"
    preset = {"dataset": "imagefolder", "data": {"root": str(root)}}
    overlay.write_text(yaml.safe_dump({"benchmark": "mine", "presets": {"mine": preset}}))
    work = tmp_path / "work"
    work.mkdir()

    def snakemake(*extra):
        cmd = [
            "snakemake", "--cores", "1", "-s", str(ROOT / "Snakefile"), "-d", str(work),
            "--configfile", str(ROOT / "params.yaml"), str(overlay), *extra,
            "--", "data/mine/tables",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    snakemake()
    assert "Nothing to be done" in snakemake("-n")
    png(root / "train" / "dog" / "new.png")
    assert "prepare_data" in snakemake("-n")
