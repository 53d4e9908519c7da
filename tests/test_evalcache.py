"""The evaluation cache: ID-val and every eval set transformed once into uint8 arrays that every
evaluation of the benchmark memory-maps, with the same metrics as decoding."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import flyp.loading
from flyp.cli import main
from flyp.datasets import get_benchmark, table_path
from flyp.datasets.tables import ImageTable, read_table, write_table
from flyp.evalcache import EvalCache, cached_sets, write_eval_cache
from flyp.io import UserError
from flyp.models import (
    classifier_from_checkpoint,
    load_checkpoint,
    preprocess_cfg,
    preprocess_transforms,
    save_checkpoint,
)
from flyp.scoring import predict

BENCH = get_benchmark("embedded")


def flyp_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def cache(tiny_tables, tiny_pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalcache")
    done = flyp_cli(
        "evalcache",
        "--benchmark",
        "embedded",
        "--checkpoint",
        tiny_pretrained,
        "--data",
        tiny_tables,
        "--out",
        out,
        "--batch-size",
        20,
    )
    assert done.exit_code == 0, done.output
    return out


@pytest.fixture(scope="module")
def ends(tiny_tables, tiny_captions, tiny_pretrained, tmp_path_factory):
    """(zero-shot, finetuned) checkpoints with heads: zero-shot made by the method, the other its
    weights moved by a random step, as a finetuned model would be."""
    from flyp.finetuning import finetune
    from flyp.training import TrainConfig

    folder = tmp_path_factory.mktemp("ends")
    zs = folder / "zs.safetensors"
    cfg = TrainConfig(epochs=1, lr=1e-5, wd=0.0, batch_size=48, warmup_steps=0, seed=0)
    finetune(
        "embedded",
        tiny_tables,
        tiny_captions,
        tiny_pretrained,
        "zeroshot",
        cfg,
        options={},
        out=zs,
        log_csv=folder / "log.csv",
        device=torch.device("cpu"),
        log=lambda m: None,
    )
    ckpt = load_checkpoint(zs)
    g = torch.Generator().manual_seed(1)
    moved = {
        k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in ckpt.clip.items()
    }
    head = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in ckpt.head.items()}
    ft = folder / "ft.safetensors"
    save_checkpoint(ft, ckpt.model_name, moved, head, {**ckpt.info, "method": "ft"})
    return zs, ft


def test_the_cache_holds_the_eval_transforms_uint8_images_and_the_table_rows(
    cache, tiny_tables, tiny_pretrained
):
    _, eval_tf = preprocess_transforms(preprocess_cfg(load_checkpoint(tiny_pretrained)))
    manifest = json.loads((cache / "evalcache.json").read_text())
    assert sorted(manifest["sets"]) == sorted(cached_sets(BENCH))
    assert manifest["transform"]["size"] == [32, 32]
    for name in cached_sets(BENCH):
        table = ImageTable(table_path(tiny_tables, name), eval_tf)
        images = np.load(cache / f"{name}.npy", mmap_mode="r")
        assert images.dtype == np.uint8 and images.shape == (len(table), 3, 32, 32)
        expected = torch.stack([table[i][0] for i in range(len(table))])
        assert torch.equal(torch.from_numpy(np.array(images)), expected), name
        rows = read_table(cache / f"{name}.parquet")
        assert "image" not in rows and rows["label"].tolist() == table.df["label"].tolist()


def test_predictions_from_the_cache_equal_those_from_decoding(cache, tiny_tables, ends):
    ckpt = load_checkpoint(ends[1])
    classifier = classifier_from_checkpoint(ckpt)
    _, eval_tf = preprocess_transforms(preprocess_cfg(ckpt))
    opened = EvalCache(cache, tiny_tables, preprocess_cfg(ckpt))
    for name in ("val", "sketch"):
        cached = predict(classifier, opened.dataset(name), batch_size=16)
        decoded = predict(
            classifier, ImageTable(table_path(tiny_tables, name), eval_tf), batch_size=16
        )
        assert all(torch.equal(a, b) for a, b in zip(cached, decoded, strict=True)), name


def test_evaluation_and_ensembling_give_the_same_files_with_the_cache(
    cache, tiny_tables, ends, tmp_path, monkeypatch
):
    zs, ft = ends
    outputs, decodes = {}, []
    real = ImageTable.__getitem__
    monkeypatch.setattr(
        ImageTable, "__getitem__", lambda self, i: (decodes.append(i), real(self, i))[1]
    )
    for mode in ("decoded", "cached"):
        out = tmp_path / mode
        decodes.clear()
        extra = ["--eval-cache", cache] if mode == "cached" else []
        done = flyp_cli(
            "evaluate",
            "--benchmark",
            "embedded",
            "--data",
            tiny_tables,
            "--checkpoint",
            ft,
            "--metrics-out",
            out / "metrics.json",
            "--provenance-out",
            out / "provenance.json",
            "--ensemble-with",
            zs,
            "--alphas",
            "0,0.5,1",
            "--curve-out",
            out / "wise_curve.csv",
            "--wise-out",
            out / "wise_metrics.json",
            "--batch-size",
            20,
            *extra,
        )
        assert done.exit_code == 0, done.output
        assert bool(decodes) == (mode == "decoded")  # the cache decodes nothing
        outputs[mode] = {
            f: (out / f).read_bytes()
            for f in ("metrics.json", "wise_curve.csv", "wise_metrics.json")
        }
    assert outputs["cached"] == outputs["decoded"]
    assert len(outputs["cached"]["wise_curve.csv"].splitlines()) == 4


def test_a_cache_made_for_another_resolution_is_refused(
    tiny_tables, tiny_pretrained, ends, tmp_path
):
    ckpt = load_checkpoint(tiny_pretrained)
    other = tmp_path / "48px.safetensors"
    save_checkpoint(
        other,
        ckpt.model_name,
        ckpt.clip,
        None,
        {"preprocess": {**preprocess_cfg(ckpt), "size": [48, 48]}},
    )
    write_eval_cache(BENCH, other, tiny_tables, tmp_path / "cache48", log=lambda m: None)
    assert np.load(tmp_path / "cache48" / "val.npy").shape[2:] == (48, 48)
    done = flyp_cli(
        "evaluate",
        "--benchmark",
        "embedded",
        "--data",
        tiny_tables,
        "--checkpoint",
        ends[1],
        "--metrics-out",
        tmp_path / "m.json",
        "--provenance-out",
        tmp_path / "p.json",
        "--eval-cache",
        tmp_path / "cache48",
    )
    assert done.exit_code == 2
    message = done.output.strip().splitlines()[-1]
    assert "cache48: made for another preprocessing" in message
    assert "size [48, 48] (model: [32, 32])" in message
    assert not (tmp_path / "m.json").exists()


def test_a_cache_of_tables_that_changed_since_is_refused(
    cache, tiny_tables, tiny_pretrained, tmp_path
):
    import shutil

    data = tmp_path / "tables"
    shutil.copytree(tiny_tables, data)
    df = read_table(table_path(data, "sketch"))
    write_table(df.iloc[1:], table_path(data, "sketch"))
    opened = EvalCache(cache, data, preprocess_cfg(load_checkpoint(tiny_pretrained)))
    assert len(opened.dataset("val")) == 48  # unchanged tables are still read
    with pytest.raises(UserError, match="set 'sketch' was made from another .*sketch.parquet"):
        opened.dataset("sketch")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--out", "{file}"], "{file}: exists and is not a folder"),
        (["--data", "{tmp}/none"], "none/val.parquet: table not found"),
        (["--checkpoint", "{file}"], "{file}: not a readable safetensors checkpoint"),
    ],
)
def test_bad_input_to_evalcache_is_one_line(args, expected, tiny_tables, tiny_pretrained, tmp_path):
    file = tmp_path / "a_file"
    file.write_text("not a folder")
    given = {"--checkpoint": tiny_pretrained, "--data": tiny_tables, "--out": tmp_path / "out"}
    for key, value in zip(args[::2], args[1::2], strict=True):
        given[key] = value.format(file=file, tmp=tmp_path)
    done = flyp_cli(
        "evalcache", "--benchmark", "embedded", *[x for pair in given.items() for x in pair]
    )
    assert done.exit_code == 2
    lines = done.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and expected.format(file=file, tmp=tmp_path) in lines[-1]
    assert not (tmp_path / "out" / "evalcache.json").exists()


def test_evaluate_refuses_a_folder_that_is_not_a_cache(tiny_tables, ends, tmp_path):
    done = flyp_cli(
        "evaluate",
        "--benchmark",
        "embedded",
        "--data",
        tiny_tables,
        "--checkpoint",
        ends[1],
        "--metrics-out",
        tmp_path / "m.json",
        "--provenance-out",
        tmp_path / "p.json",
        "--eval-cache",
        tiny_tables,
    )
    assert done.exit_code == 2
    assert (
        "not an evaluation cache (no evalcache.json); make it with `flyp evalcache`"
        in (done.output.strip().splitlines()[-1])
    )


def test_the_cache_is_made_with_the_workers_asked_for_and_read_without(
    dataloaders, tiny_tables, tiny_pretrained, tmp_path
):
    made = dataloaders
    write_eval_cache(
        BENCH, tiny_pretrained, tiny_tables, tmp_path / "c", num_workers=1, log=lambda m: None
    )
    assert made == [("ImageTable", 1)] * len(cached_sets(BENCH))
    opened = EvalCache(
        tmp_path / "c", tiny_tables, preprocess_cfg(load_checkpoint(tiny_pretrained))
    )
    flyp.loading.make_loader(opened.dataset("val"), batch_size=8, workers=3)
    assert made[-1] == ("CachedImages", 0)  # a memory map is read in the main process


@pytest.mark.parametrize(("method", "shots"), [("ft", None), ("zeroshot", 1)])
def test_finetuning_selects_on_the_cached_id_val_with_the_same_scores(
    method, shots, cache, tiny_tables, tiny_captions, tiny_pretrained, tmp_path, monkeypatch
):
    from flyp.finetuning import finetune
    from flyp.training import TrainConfig

    reads = []
    real = ImageTable.__getitem__
    monkeypatch.setattr(
        ImageTable, "__getitem__", lambda self, i: (reads.append(self.path.stem), real(self, i))[1]
    )
    cfg = TrainConfig(epochs=1, lr=1e-4, wd=0.0, batch_size=48, warmup_steps=0, seed=0)
    results, tensors = {}, {}
    for mode, folder in (("decoded", None), ("cached", cache)):
        reads.clear()
        out = tmp_path / f"{mode}.safetensors"
        results[mode] = finetune(
            "embedded",
            tiny_tables,
            tiny_captions,
            tiny_pretrained,
            method,
            cfg,
            options={},
            out=out,
            log_csv=tmp_path / f"{mode}.csv",
            device=torch.device("cpu"),
            shots=shots,
            eval_cache=folder,
            log=lambda m: None,
        )
        assert ("val" in reads) == (mode == "decoded")
        ckpt = load_checkpoint(out)
        tensors[mode] = {**ckpt.clip, **ckpt.head}
    assert results["cached"] == results["decoded"]
    assert tensors["cached"].keys() == tensors["decoded"].keys()
    assert all(torch.equal(tensors["cached"][k], tensors["decoded"][k]) for k in tensors["cached"])


def test_a_benchmark_of_image_files_with_regions_and_borders_scores_the_same_from_the_cache(
    ends, tmp_path
):
    """Path tables, as the real benchmarks have: JPEG files, a border to crop (ObjectNet) and a
    region column read by the metric (FMoW's worst-region accuracy)."""
    import pandas as pd
    from PIL import Image

    from flyp.datasets import Benchmark, EvalSet
    from flyp.evaluation import evaluate_classifiers

    rng = np.random.default_rng(0)
    data = tmp_path / "tables"
    (data / "images").mkdir(parents=True)
    for name in ("val", "id_test", "ood_test"):
        rows = []
        for i in range(24):
            pixels = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / "images" / f"{name}{i}.jpg", quality=90)
            rows.append(
                {
                    "image_id": f"{name}{i}",
                    "label": i % 12,
                    "path": f"images/{name}{i}.jpg",
                    "crop": 2,
                    "region": ["Africa", "Europe", "Other"][i % 3],
                }
            )
        write_table(pd.DataFrame(rows), table_path(data, name))
    bench = Benchmark(
        "files",
        BENCH.classnames,
        BENCH.templates,
        [
            EvalSet("id_test", ood=False),
            EvalSet("ood_test", ood=True, metric="worst_region_accuracy"),
        ],
        prepare=None,
    )
    write_eval_cache(bench, ends[1], data, tmp_path / "cache", log=lambda m: None)
    classifier = classifier_from_checkpoint(load_checkpoint(ends[1]))
    decoded = evaluate_classifiers([classifier], bench, data, log=lambda m: None)
    cached = evaluate_classifiers(
        [classifier], bench, data, eval_cache=tmp_path / "cache", log=lambda m: None
    )
    assert cached == decoded and set(decoded[0]) == {"id_test", "ood_test", "avg_ood"}
    _, eval_tf = preprocess_transforms(preprocess_cfg(load_checkpoint(ends[1])))
    table = ImageTable(table_path(data, "ood_test"), eval_tf)
    assert torch.equal(
        torch.from_numpy(np.load(tmp_path / "cache" / "ood_test.npy")),
        torch.stack([table[i][0] for i in range(len(table))]),
    )
