"""Every preset with a fixture runs end to end, offline, as a user would run it: `flyp fixture`
writes the miniature, then the command it prints takes it from the archives (fetched from file://
URLs and checked against their stated sums, then unpacked by the same rules as the real archives)
to results/table.csv with the benchmark's columns.

Runs in a temporary copy of the project; the method list is shortened (one method per kind: no
training, a linear probe, end-to-end finetuning, FLYP) to keep each preset within minutes. ImageNet
runs in the fast tier (`pytest`), the other presets in the slow one (`pytest -m slow`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flyp.datasets import get_benchmark
from flyp.datasets.download import archive_filename, get_download
from flyp.fixtures import fixture_names
from flyp.methods import get_method
from flyp.workflow.config import FEWSHOT_SWITCHES
from tests.conftest import ROOT

METHODS = ["zeroshot", "lp", "ft", "flyp"]
PROJECT_FILES = ["Snakefile", "params.yaml", "pyproject.toml", "workflow", "flyp"]


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-5000:]}"
        )
    return done


def copy_project(root: Path) -> None:
    root.mkdir()
    for name in PROJECT_FILES:
        src, dst = ROOT / name, root / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)


def table_columns(benchmark: str) -> list[str]:
    """The table's metric columns, as report names them: "id" for the ID test set, each OOD set
    by name, with the metric appended when it is not accuracy."""
    bench = get_benchmark(benchmark)
    return [
        ("id" if s is bench.id_set else s.name) + ("" if s.metric == "accuracy" else f"_{s.metric}")
        for s in bench.eval_sets
    ]


def fewshot_rows(preset: str, project: Path, out: Path) -> list[str]:
    """The table's few-shot rows: the preset's few-shot methods (params.yaml) at the k the fixture
    cuts its protocol to (fixture.yaml); none for a preset without few-shot runs."""
    overlay = yaml.safe_load((out / "fixture.yaml").read_text())["presets"][preset]
    params = yaml.safe_load((project / "params.yaml").read_text())["presets"][preset]
    if "fewshot" not in params:
        return []
    shots = overlay.get("fewshot", params["fewshot"])["shots"]
    return [f"{m}@{k}shot" for m in params["fewshot"]["methods"] for k in sorted(shots)]


def check_fewshot_std(preset: str, project: Path, out: Path, table: pd.DataFrame) -> None:
    """Each few-shot row's std over its draws is the one the preset asks for (fewshot.std_ddof:
    1 the sample std, 0 numpy's np.std, the FLYP reference's), recomputed from the draws' own
    metrics; with 0 the table's std_ddof column says so. The draws of a method that trains
    record the protocol's switches that are not the default in their provenance."""
    params = yaml.safe_load((project / "params.yaml").read_text())["presets"][preset]
    if "fewshot" not in params:
        return
    protocol = {
        **params["fewshot"],
        **yaml.safe_load((out / "fixture.yaml").read_text())["presets"][preset]["fewshot"],
    }
    ddof = protocol.get("std_ddof", FEWSHOT_SWITCHES["std_ddof"])
    assert protocol["draws"] > 1  # a std to check
    rows = table.set_index("method")
    for m in protocol["methods"]:
        for k in protocol["shots"]:
            ids = [
                json.loads(
                    (out / "results" / preset / m / f"k{k}/draw{d}/metrics.json").read_text()
                )[get_benchmark(preset).id_set.name]
                for d in range(protocol["draws"])
            ]
            draw0 = out / "results" / preset / m / f"k{k}/draw0/provenance.json"
            recorded = json.loads(draw0.read_text())
            if get_method(m).trains:  # the switches a draw trained with, where not the default
                for key, name in [("val_loss_tie", "tie"), ("augmentation", "augmentation")]:
                    value = protocol.get(key, FEWSHOT_SWITCHES[key])
                    expected = None if value == FEWSHOT_SWITCHES[key] else value
                    assert recorded.get(name) == expected, (m, key)
            row = rows.loc[f"{m}@{k}shot"]
            assert row["id_std"] == pytest.approx(round(100 * np.std(ids, ddof=ddof), 2)), m
            if ddof == 0:
                assert row["std_ddof"] == 0
    if ddof == 0:
        assert set(rows.loc[[r for r in rows.index if "@" not in r], "std_ddof"]) == {1}


def check_resized_copy(preset: str, out: Path) -> None:
    """A preset with presets.<name>.data.train_resize trains on the resized copy (rule
    resize_train): the ImageNet fixture's has half its train images larger than the side, so
    the copy resized some and copied the others, and a trained run's checkpoint records it."""
    from flyp.models import load_checkpoint

    side = yaml.safe_load((out / "fixture.yaml").read_text())["presets"][preset]["data"].get(
        "train_resize"
    )
    if not side:
        return
    manifest = json.loads((out / "data" / preset / "train_resized/manifest.json").read_text())
    train = manifest["tables"]["train"]
    assert manifest["side"] == side and 0 < train["resized"] < train["rows"]
    trained = load_checkpoint(out / "models" / preset / "ft/seed0/best.safetensors")
    assert trained.info["train_data"]["side"] == side
    assert (
        "train_data"
        not in load_checkpoint(out / "models" / preset / "zeroshot/seed0/best.safetensors").info
    )


FAST_PRESET = "imagenet"


# (not `benchmark`: pytest-benchmark owns that fixture name)
@pytest.mark.parametrize(
    "preset",
    [
        pytest.param(name, marks=() if name == FAST_PRESET else pytest.mark.slow)
        for name in fixture_names()
    ],
)
def test_a_fixture_runs_from_its_archives_to_the_table(preset, tmp_path):
    project = tmp_path / "project"
    copy_project(project)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }  # any network access would fail
    env.pop("DVC_STAGE", None)
    out = tmp_path / "fixture"
    printed = run(["flyp", "fixture", "--benchmark", preset, "--out", str(out)], project, env)
    commands = printed.stdout.strip().splitlines()
    assert len(commands) == 1 and commands[0].startswith("snakemake ")
    cmd = shlex.split(commands[0])
    cmd[cmd.index("--cores") + 1] = "2"
    end = cmd.index("--")  # (before the targets) the test's shorter method list
    cmd[end:end] = ["--config", f"methods=[{','.join(METHODS)}]"]
    run(cmd, project, env)

    assert not (project / "results").exists()  # the project's own results are never touched
    table = pd.read_csv(out / "results" / "table.csv")
    assert list(table["method"]) == [
        *METHODS,
        *(f"{m}+wise" for m in METHODS[1:]),
        *fewshot_rows(preset, project, out),
    ]
    columns = table_columns(preset)
    assert set(columns) <= set(table.columns)
    assert table[columns].notna().all().all()
    assert table[columns].apply(lambda c: c.between(0, 100)).all().all()  # percent
    check_fewshot_std(preset, project, out, table)
    check_resized_copy(preset, out)
    # run from another folder (-d), the jobs name the commit of the code they ran
    for column in ("git_revision", "eval_revision"):
        assert table[column].str.fullmatch(r"[0-9a-f]{40}(\+diff\.[0-9a-f]{12})?").all(), column

    # The archives went through the download and extract rules, checked against stated sums.
    bench = get_benchmark(preset)
    overlay = yaml.safe_load((out / "fixture.yaml").read_text())
    sources = overlay["presets"][preset]["data"]
    for d in bench.downloads:
        assert (out / "data" / "raw" / d.name).is_dir(), d.name
        if isinstance(sources[d.name], dict):
            source = sources[d.name]["source"]
            assert source.startswith("file://") and "sha256" in sources[d.name]
            fetched = (
                out / "data/raw/downloads" / archive_filename(get_download(bench, d.name), source)
            )
            assert fetched.stat().st_size == sources[d.name]["size"]
            assert (out / "logs/raw" / f"download_{fetched.name}.log").is_file()


@pytest.mark.slow  # 4.5 minutes each on the 2 shared cores (2026-12-07)
@pytest.mark.parametrize("dataset", ["imagefolder", "csv"])
def test_your_own_images_run_from_a_folder_to_the_table(dataset, tmp_path):
    """`flyp fixture --benchmark imagefolder` (or csv) writes the embedded world's images as files
    and an overlay whose preset names them; the printed command takes them through every step
    to a table with both OOD sets, every method's rows, and tables whose labels are the files'."""
    project = tmp_path / "project"
    copy_project(project)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "http_proxy": "http://127.0.0.1:9"}
    env.pop("DVC_STAGE", None)
    out = tmp_path / "example"
    printed = run(["flyp", "fixture", "--benchmark", dataset, "--out", str(out)], project, env)
    cmd = shlex.split(printed.stdout.strip().splitlines()[-1])
    cmd[cmd.index("--cores") + 1] = "2"
    end = cmd.index("--")
    cmd[end:end] = ["--config", f"methods=[{','.join(METHODS)}]"]
    run(cmd, project, env)

    overlay = yaml.safe_load((out / "fixture.yaml").read_text())
    preset = overlay["benchmark"]
    table = pd.read_csv(out / "results" / "table.csv")
    assert list(table["method"]) == [*METHODS, *(f"{m}+wise" for m in METHODS[1:])]
    suffix = "" if dataset == "imagefolder" else "_worst_group_accuracy"
    columns = [f"{c}{suffix}" for c in ("id", "renditions", "sketch")]
    assert table[columns].apply(lambda c: c.between(0, 100)).all().all()
    tables = out / "data" / preset / "tables"
    classes = json.loads((tables / "splits.json").read_text())["classes"]
    assert len(classes) == 12
    for name in ("train", "val", "test", "renditions", "sketch"):
        df = pd.read_parquet(tables / f"{name}.parquet")
        assert len(df) and "image" not in df.columns  # paths, no image bytes
        for image_id, label in zip(df["image_id"], df["label"], strict=True):
            # the class folder (imagefolder) or the file's name (csv) names the class
            assert classes[label] in (Path(image_id).parent.name, Path(image_id).stem[:-4]), (
                image_id
            )
