"""The ImageNet benchmark on tiny fixtures in the archives' exact on-disk formats, its place in the
workflow, and loading released weights from a local file.

The archives come from the fixture generator (flyp/fixtures/imagenet.py) with a small layout of
their own: the real wnids (so that labels can be checked against open_clip's class names) and a
devkit whose ILSVRC2012_IDs are *not* in sorted-wnid order, as in the real one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from flyp.cli import main
from flyp.datasets import get_benchmark, table_path
from flyp.datasets.download import extract_archive, link_folder, obtain
from flyp.datasets.tables import ImageTable, read_table
from flyp.fixtures.imagenet import Layout, devkit_ids, wnids
from flyp.fixtures.imagenet import build_archives as make_archives
from flyp.fixtures.imagenet import objectnet_folder as make_objectnet
from flyp.io import UserError
from flyp.scoring import score
from tests.conftest import ROOT

WNIDS = wnids()
INDEX = {w: i for i, w in enumerate(WNIDS)}
TENCH, KIT_FOX, WOK = "n01440764", "n02119789", "n04596742"
ANALOG_CLOCK, DIGITAL_CLOCK, BANANA = "n02708093", "n03196217", "n07753592"
R_WNIDS = ["n01443537", "n01833805", "n02007558"]  # goldfish, hummingbird, flamingo
A_WNIDS = ["n01498041", "n01531178"]  # stingray, goldfinch
VAL_WNIDS = [KIT_FOX, TENCH, WOK, KIT_FOX, WOK]  # val image i+1 shows VAL_WNIDS[i]
V2_FOLDERS = ["0", "1", "2", "10", "11", "100"]  # a string sort puts "10" before "2"
# The archives of these tests (the generator of flyp/fixtures/imagenet.py, a smaller layout):
# "bench" maps to no ImageNet class and must be dropped; the clock class maps to two.
LAYOUT = Layout(
    train={TENCH: 3, KIT_FOX: 3, WOK: 3},
    val=VAL_WNIDS,
    v2=dict.fromkeys(V2_FOLDERS, 1),
    r=dict.fromkeys(R_WNIDS, 2),
    a=dict.fromkeys(A_WNIDS, 2),
    sketch={TENCH: 1, WOK: 1},
    objectnet={
        "alarm_clock": ("Alarm clock", ["analog clock", "digital clock"], 2),
        "banana": ("Banana", ["banana"], 1),
        "bench": ("Bench", [], 2),
    },
)


def quiet(msg):
    pass


def build_archives(folder: Path) -> dict[str, Path]:
    return make_archives(folder, LAYOUT)


def objectnet_folder(root: Path) -> Path:
    return make_objectnet(root, LAYOUT)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """data/raw/ as the download rules leave it: each archive unpacked (ImageNet train's inner
    tars into class folders), ObjectNet linked from where the user unzipped it."""
    base = tmp_path_factory.mktemp("imagenet")
    archives = build_archives(base / "archives")
    raw = base / "data" / "raw"
    bench = get_benchmark("imagenet")
    inner = {d.name: d.inner_tars for d in bench.downloads}
    for name, archive in archives.items():
        extract_archive(archive, raw / name, inner_tars=inner[name], progress=False, log=quiet)
    link_folder(objectnet_folder(base / "user"), raw / "objectnet", log=quiet)
    return raw


@pytest.fixture(scope="module")
def tables(raw) -> Path:
    out = raw.parent / "imagenet" / "tables"
    done = CliRunner().invoke(
        main,
        [
            "prepare",
            "--benchmark",
            "imagenet",
            "--out",
            str(out),
            "-o",
            f"raw_dir={raw}",
            "-o",
            "val_size=2",
            "-o",
            "seed=0",
        ],
    )
    assert done.exit_code == 0, done.output
    return out


def table(tables: Path, name: str) -> pd.DataFrame:
    return read_table(table_path(tables, name))


# ----------------------------------------------------------------------------------------------
# Labels


def test_class_names_and_templates_come_from_open_clip():
    bench = get_benchmark("imagenet")
    assert len(bench.classnames) == 1000 and len(bench.templates) == 80
    assert bench.classnames[INDEX[TENCH]] == "tench" and bench.classnames[INDEX[WOK]] == "wok"
    assert all(t.count("{}") == 1 for t in bench.templates)
    assert "a photo of a {}." in bench.templates


def test_val_labels_follow_the_devkit_ground_truth_in_sorted_wnid_order(tables):
    test = table(tables, "test")
    assert list(test["image_id"]) == [f"ILSVRC2012_val_{i:08d}" for i in range(1, 6)]
    assert list(test["label"]) == [INDEX[w] for w in VAL_WNIDS]
    names = get_benchmark("imagenet").classnames
    assert [names[y] for y in test["label"]] == ["kit fox", "tench", "wok", "kit fox", "wok"]
    # the ID in the ground truth is not the label: a loader using it as one would fail here
    assert list(test["label"]) != [devkit_ids()[w] - 1 for w in VAL_WNIDS]


def test_a_val_copy_sorted_into_wnid_folders_is_checked_against_the_ground_truth(raw, tmp_path):
    from flyp.datasets.imagenet import read_devkit, val_table

    devkit = raw / "imagenet_devkit" / "ILSVRC2012_devkit_t12"
    wnids, id_to_wnid = read_devkit(devkit)
    index = {w: i for i, w in enumerate(wnids)}
    flat = val_table(raw / "imagenet_val", devkit, index, id_to_wnid, tmp_path)
    for case, shift in (("right", 0), ("wrong", 1)):
        sorted_copy = tmp_path / case
        for i in range(len(VAL_WNIDS)):
            folder = sorted_copy / VAL_WNIDS[(i + shift) % len(VAL_WNIDS)]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(raw / "imagenet_val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", folder)
    df = val_table(tmp_path / "right", devkit, index, id_to_wnid, tmp_path)
    assert list(df["label"]) == list(flat["label"])
    assert df["path"].iloc[0] == f"right/{KIT_FOX}/ILSVRC2012_val_00000001.JPEG"
    with pytest.raises(UserError, match="another class folder"):
        val_table(tmp_path / "wrong", devkit, index, id_to_wnid, tmp_path)


def test_train_is_labelled_by_wnid_and_a_seeded_sample_is_held_out_as_val(tables, raw):
    train, val = table(tables, "train"), table(tables, "val")
    assert len(val) == 2 and len(train) == 7
    assert not set(train["image_id"]) & set(val["image_id"])
    both = pd.concat([train, val])
    assert sorted(both["image_id"]) == sorted(
        f"{w}/{w}_{i}.JPEG" for w in (TENCH, KIT_FOX, WOK) for i in (1, 2, 3)
    )
    for image_id, label in zip(both["image_id"], both["label"], strict=True):
        assert label == INDEX[image_id.split("/")[0]]

    from flyp.datasets.imagenet import split_holdout

    splits = {seed: tuple(split_holdout(both, 2, seed)[1]["image_id"]) for seed in range(5)}
    assert splits[0] == tuple(split_holdout(both, 2, 0)[1]["image_id"])  # same seed, same split
    assert len(set(splits.values())) > 1  # the seed decides
    with pytest.raises(UserError, match="val_size"):
        split_holdout(both, 9, 0)
    # val_in_train (selection: last_epoch, the FLYP reference): the same val, train keeps all
    train_all, same_val = split_holdout(both, 2, 0, keep_in_train=True)
    assert len(train_all) == 9 and same_val.equals(split_holdout(both, 2, 0)[1])


def test_imagenet_v2_folder_names_are_class_indices_not_sort_positions(tables):
    v2 = table(tables, "v2")
    by_folder = dict(zip(v2["image_id"].str.split("/").str[0], v2["label"], strict=True))
    assert by_folder == {f: int(f) for f in V2_FOLDERS}
    assert by_folder["10"] == 10 and by_folder["2"] == 2  # (string-sort positions: 2 and 5)


@pytest.mark.parametrize("name, wnids", [("r", R_WNIDS), ("a", A_WNIDS)])
def test_r_and_a_keep_their_own_classes_and_project_the_1000_logits(tables, name, wnids):
    df = table(tables, name)
    labels = dict(zip(df["image_id"].str.split("/").str[0], df["label"], strict=True))
    assert labels == {w: k for k, w in enumerate(sorted(wnids))}  # 0..K-1, sorted wnid folders
    assert sorted(set(df["imagenet_label"])) == sorted(INDEX[w] for w in wnids)

    bench = get_benchmark("imagenet")
    eval_set = bench.eval_set(name)
    logits = torch.randn(len(df), 1000)
    projected = eval_set.project_logits(logits, df)
    assert projected.shape == (len(df), len(wnids))
    # ascending ImageNet index order = sorted wnid order = labels 0..K-1
    torch.testing.assert_close(projected, logits[:, sorted(INDEX[w] for w in wnids)])

    # A class outside the subset scores highest everywhere: the 1000-way argmax is always wrong,
    # the projected one always right.
    logits = torch.zeros(len(df), 1000)
    logits[torch.arange(len(df)), torch.tensor(df["imagenet_label"].tolist())] = 1.0
    logits[:, INDEX[KIT_FOX]] = 2.0
    labels = torch.tensor(df["label"].tolist())
    assert score(logits, labels, eval_set, df) == 1.0
    assert (logits.argmax(1) == labels).float().mean().item() == 0.0


def test_sketch_uses_the_1000_classes(tables):
    sketch = table(tables, "sketch")
    assert sorted(sketch["label"]) == sorted([INDEX[TENCH], INDEX[WOK]])
    assert get_benchmark("imagenet").eval_set("sketch").project_logits is None


def test_objectnet_keeps_the_mapped_classes_and_max_pools_their_logits(tables):
    df = table(tables, "objectnet")
    folders = df["image_id"].str.split("/").str[0]
    assert sorted(set(folders)) == ["alarm_clock", "banana"]  # "bench" maps to no ImageNet class
    assert list(df["label"]) == [0, 0, 1]
    clock = sorted([INDEX[ANALOG_CLOCK], INDEX[DIGITAL_CLOCK]])
    assert [list(x) for x in df["imagenet_labels"]] == [clock, clock, [INDEX[BANANA]]]

    eval_set = get_benchmark("imagenet").eval_set("objectnet")
    logits = torch.zeros(3, 1000)
    logits[:, INDEX[KIT_FOX]] = 9.0  # an unmapped class: ignored
    logits[0, INDEX[DIGITAL_CLOCK]] = 5.0  # the clock class's *second* ImageNet class
    logits[0, INDEX[BANANA]] = 3.0
    logits[1, INDEX[ANALOG_CLOCK]] = 4.0
    logits[2, INDEX[BANANA]] = 1.0
    logits[2, INDEX[ANALOG_CLOCK]] = 0.5
    projected = eval_set.project_logits(logits, df)
    torch.testing.assert_close(projected, torch.tensor([[5.0, 3.0], [4.0, 0.0], [0.5, 1.0]]))
    assert score(logits, torch.tensor(df["label"].tolist()), eval_set, df) == 1.0


def test_objectnet_images_lose_a_two_pixel_border_before_evaluation(tables):
    dataset = ImageTable(table_path(tables, "objectnet"))
    image = np.asarray(dataset.load_image(0))
    assert image.shape == (8, 8, 3)  # 12 px - 2 * 2
    assert (image == (0, 0, 255)).all()  # only the inside: the red frame is gone
    assert np.asarray(ImageTable(table_path(tables, "test")).load_image(0)).shape == (8, 8, 3)


def test_every_table_indexes_readable_files_relative_to_its_folder(tables):
    manifest = json.loads((tables / "manifest.json").read_text())
    assert manifest["tables"]["objectnet"]["rows"] == 3  # the number of images evaluated
    for name in get_benchmark("imagenet").tables():
        df = table(tables, name)
        assert not df["path"].str.startswith("/").any()
        dataset = ImageTable(table_path(tables, name))
        for i in range(len(dataset)):
            dataset.load_image(i)


def test_missing_raw_data_is_a_clear_error(tmp_path):
    from flyp.datasets.imagenet import prepare

    with pytest.raises(UserError, match="imagenet_devkit: not found"):
        prepare(tmp_path / "tables", raw_dir=str(tmp_path / "raw"))


def test_the_real_checksums_refuse_a_wrong_archive(tmp_path, raw):
    archives = build_archives(tmp_path / "archives")
    bench = get_benchmark("imagenet")
    with pytest.raises(UserError, match=r"ILSVRC2012_img_val.tar: size .* expected 6,744,924,160"):
        obtain(
            bench,
            "imagenet_val",
            source=str(archives["imagenet_val"]),
            extract_to=tmp_path / "raw" / "imagenet_val",
            progress=False,
            log=quiet,
        )
    with pytest.raises(UserError, match="ILSVRC2012_devkit_t12.tar.gz: md5"):
        obtain(
            bench,
            "imagenet_devkit",
            source=str(archives["imagenet_devkit"]),
            extract_to=tmp_path / "raw" / "imagenet_devkit",
            progress=False,
            log=quiet,
        )
    assert not (tmp_path / "raw").exists()


# ----------------------------------------------------------------------------------------------
# Workflow


def workflow_copy(tmp_path: Path) -> Path:
    """The workflow files in a fresh folder: a dry run there sees no data, models or results."""
    work = tmp_path / "wf"
    work.mkdir()
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "workflow", work / "workflow")
    return work


def dry_run(work: Path, *args: str) -> str:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }  # any network access would fail
    done = subprocess.run(
        [
            "snakemake",
            "-n",
            "--cores",
            "all",
            "--config",
            "benchmark=imagenet",
            *args,
            "--",
            "results/table.csv",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def job_counts(out: str) -> dict[str, int]:
    lines = out.split("Job stats:", 1)[1].splitlines()[3:]
    counts = {}
    for line in lines:
        if not line.strip() or line.startswith("total"):
            break
        rule, n = line.split()
        counts[rule] = int(n)
    return counts


def test_dry_run_lists_the_whole_imagenet_dag_without_network(tmp_path):
    import yaml

    work = workflow_copy(tmp_path)
    out = dry_run(work)
    counts = job_counts(out)
    bench = get_benchmark("imagenet")
    assert counts["download"] == counts["extract"] == len(bench.downloads) == 8
    for rule in ("prepare_data", "captions", "pretrain", "report"):
        assert counts[rule] == 1, rule
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]
    assert counts["finetune"] >= len(methods) and counts["evaluate_ensemble"] >= len(methods)
    for method in methods:
        assert f"models/imagenet/{method}/" in out, method
    for d in bench.downloads:
        assert f"data/raw/{d.name}" in out
    assert "flyp pretrained" not in out or "ViT-B-16-quickgelu" in out
    assert not (work / "data").exists()  # a dry run


def test_the_references_protocol_trains_on_every_image_and_keeps_the_last_epoch(tmp_path):
    """presets.imagenet.selection: last_epoch: the prepare step keeps ID-val in train and every
    full finetuning run keeps its last epoch; few-shot runs (none here) would keep theirs."""
    work = workflow_copy(tmp_path)
    params = work / "params.yaml"
    text = params.read_text()
    assert "    selection: heldout\n" in text
    default = dry_run(work, "-p")
    params.write_text(text.replace("    selection: heldout\n", "    selection: last_epoch\n"))
    last = dry_run(work, "-p")
    finetunes = [ln for ln in last.splitlines() if ln.startswith("Shell command: flyp finetune")]
    trains = [ln for ln in finetunes if "--method zeroshot " not in ln and "--method lp " not in ln]
    assert trains and all("--keep-last" in ln for ln in trains)
    assert not any("--keep-last" in ln for ln in finetunes if ln not in trains)
    assert "-o val_in_train=True" in last and "val_in_train" not in default
    assert "--keep-last" not in default
    # the real presets' probe: the FLYP reference's features and C grid
    assert "--no-normalize --train-transform 2> logs/imagenet/features.log" in default
    lp = [ln for ln in default.splitlines() if "--method lp " in ln]
    assert lp and all(
        f" -o {o} " in ln for ln in lp for o in ("c_count=100", "log10_c_max=2", "log10_c_min=-1")
    )


def test_training_reads_the_resized_copy_and_the_other_jobs_the_tables(tmp_path):
    """presets.imagenet.data.train_resize: one resize_train job (`flyp resize` at that side),
    whose copy every training job reads (--train-data); zero-shot, the probe, features and
    evaluation read the prepared tables, and the prepare step never sees the key. Null: no such
    job, and the commands are those of a preset without the key."""
    import yaml

    work = workflow_copy(tmp_path)
    side = yaml.safe_load((ROOT / "params.yaml").read_text())["presets"]["imagenet"]["data"][
        "train_resize"
    ]
    on = dry_run(work, "-p")
    assert job_counts(on)["resize_train"] == 1
    resize = [ln for ln in on.splitlines() if ln.startswith("Shell command: flyp resize")]
    assert resize == [
        "Shell command: flyp resize --data data/imagenet/tables --out "
        f"data/imagenet/train_resized --side {side} --workers 2 2> logs/imagenet/resize_train.log"
    ]
    finetunes = [ln for ln in on.splitlines() if ln.startswith("Shell command: flyp finetune")]
    untrained = [ln for ln in finetunes if "--method zeroshot " in ln or "--method lp " in ln]
    assert untrained and not any("--train-data" in ln for ln in untrained)
    trains = [ln for ln in finetunes if ln not in untrained]
    assert trains and all("--train-data data/imagenet/train_resized " in ln for ln in trains)
    prepare = [ln for ln in on.splitlines() if ln.startswith("Shell command: flyp prepare")]
    assert prepare and "train_resize" not in prepare[0]  # not a prepare option

    (work / "local.yaml").write_text(
        json.dumps({"presets": {"imagenet": {"data": {"train_resize": None}}}})
    )
    off = dry_run(work, "-p", "--configfile", "local.yaml")
    assert "resize_train" not in job_counts(off) and "--train-data" not in off
    shell = sorted(ln for ln in off.splitlines() if ln.startswith("Shell command: flyp finetune"))
    assert shell == sorted(
        ln.replace(" --train-data data/imagenet/train_resized", "") for ln in finetunes
    )


def test_a_manually_placed_archive_is_read_in_place_not_downloaded(tmp_path):
    work = workflow_copy(tmp_path)
    placed = tmp_path / "ILSVRC2012_img_val.tar"
    placed.write_bytes(b"placeholder")
    (work / "local.yaml").write_text(
        json.dumps({"presets": {"imagenet": {"data": {"imagenet_val": str(placed)}}}})
    )
    out = dry_run(work, "--configfile", "local.yaml")
    counts = job_counts(out)
    assert counts["download"] == 7 and counts["extract"] == 8
    assert "data/raw/downloads/imagenet_val" not in out
    assert str(placed) in out  # the extract job's input


def test_the_download_jobs_run_flyp_download_with_the_right_source(tmp_path):
    """Real jobs, no network: an unset manual archive stops with where to get it; a placed folder
    is linked; a placed archive that is not the real one is refused before unpacking."""
    work = workflow_copy(tmp_path)
    archives = build_archives(tmp_path / "archives")
    sketch = tmp_path / "sketch-extracted"
    (sketch / "sketch" / TENCH).mkdir(parents=True)
    (work / "local.yaml").write_text(
        json.dumps(
            {
                "presets": {
                    "imagenet": {
                        "data": {
                            "imagenet_sketch": str(sketch),
                            "imagenet_r": str(archives["imagenet_r"]),
                        }
                    }
                }
            }
        )
    )

    def run(target):
        return subprocess.run(
            [
                "snakemake",
                "--cores",
                "1",
                "--config",
                "benchmark=imagenet",
                "--configfile",
                "local.yaml",
                "--",
                target,
            ],
            cwd=work,
            capture_output=True,
            text=True,
        )

    assert run("data/raw/downloads/imagenet_val").returncode != 0
    log = (work / "logs/raw/download_imagenet_val.log").read_text()
    assert "image-net.org" in log and "presets.imagenet.data.imagenet_val" in log
    assert not (work / "data/raw/downloads/imagenet_val").exists()

    done = run("data/raw/imagenet_sketch")
    assert done.returncode == 0, done.stderr
    assert (work / "data/raw/imagenet_sketch/source/sketch" / TENCH).is_dir()

    assert run("data/raw/imagenet_r").returncode != 0
    assert "expected 2,191,079,936 bytes" in (work / "logs/raw/extract_imagenet_r.log").read_text()
    assert not (work / "data/raw/imagenet_r").exists()


def test_the_imagenet_dag_is_versioned_by_dvc_except_raw_downloads(tmp_path):
    """DVC's stage for benchmark imagenet covers every job's outputs but the raw archives."""
    import yaml
    from dvc.repo import Repo

    from tests.test_dvc_snakemake import RAW, dag_jobs, dvc_stage, under

    work = tmp_path / "dvc"
    work.mkdir()
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["benchmark"] = "imagenet"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    Repo.init(str(work), no_scm=True).close()
    stage = dvc_stage(work)
    assert "models/imagenet" in stage["outs"] and "data/imagenet" in stage["outs"]
    jobs = dag_jobs("benchmark=imagenet")
    written = [p for job in jobs for p in job["output"]]
    assert any(p.startswith(RAW) for p in written)  # the exception is exercised here
    for path in written:
        assert path.startswith(RAW) or under(path, stage["outs"]), path


# ----------------------------------------------------------------------------------------------
# Released weights from a local file (the paper's CLIP: `flyp pretrained --pretrained FILE`)


@pytest.fixture(scope="module")
def tiny_weights():
    from flyp.models import create_clip

    torch.manual_seed(1)
    return {
        k: v.detach().clone().contiguous()
        for k, v in create_clip("flyp-tiny-rn10t").state_dict().items()
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_weights_load_from_a_local_file(tmp_path, tiny_weights, suffix):
    from safetensors.torch import save_file

    from flyp.models import create_clip, load_checkpoint

    path = tmp_path / f"tiny-weights{suffix}"
    if suffix == ".safetensors":
        save_file(tiny_weights, str(path))
    else:
        torch.save(tiny_weights, path)
    loaded = create_clip("flyp-tiny-rn10t", str(path)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tiny_weights.items())

    out = tmp_path / "pretrained.safetensors"
    done = CliRunner().invoke(
        main,
        [
            "pretrained",
            "--model",
            "flyp-tiny-rn10t",
            "--pretrained",
            str(path),
            "--out",
            str(out),
            "--log-csv",
            str(tmp_path / "log.csv"),
        ],
    )
    assert done.exit_code == 0, done.output
    ckpt = load_checkpoint(out)
    assert all(torch.equal(ckpt.clip[k], v) for k, v in tiny_weights.items())
    assert ckpt.info["pretrained"] == str(path)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path, tiny_weights):
    from flyp.models import create_clip

    path = tmp_path / "partial.bin"
    torch.save({k: v for k, v in tiny_weights.items() if not k.startswith("visual.")}, path)
    with pytest.raises(UserError, match="cannot load weights"):
        create_clip("flyp-tiny-rn10t", str(path))


def test_a_weights_file_named_openai_needs_a_quickgelu_model(tmp_path, tiny_weights):
    from safetensors.torch import save_file

    from flyp.models import check_quickgelu, create_clip

    path = tmp_path / "ViT-B-16-openai.safetensors"
    save_file(tiny_weights, str(path))
    with pytest.raises(UserError, match="QuickGELU"):
        create_clip("flyp-tiny-rn10t", str(path))
    with pytest.raises(UserError, match="ViT-B-16-quickgelu"):
        check_quickgelu("ViT-B-16", str(path))
    check_quickgelu("ViT-B-16-quickgelu", str(path))
    renamed = tmp_path / "ViT-B-16-laion.safetensors"
    shutil.copy(path, renamed)
    check_quickgelu("ViT-B-16", str(renamed))


def test_a_boolean_prepare_option_reads_true_and_false_and_refuses_anything_else():
    from flyp.cli import _parse_options

    defaults = {"val_in_train": False, "val_size": 10000}
    for text, value in (("True", True), ("false", False), ("1", True), ("0", False)):
        assert _parse_options((f"val_in_train={text}",), defaults) == {"val_in_train": value}
    with pytest.raises(UserError, match="option 'val_in_train': expected bool, got 'maybe'"):
        _parse_options(("val_in_train=maybe",), defaults)
