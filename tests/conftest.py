"""Shared fixtures: a tiny embedded benchmark and a tiny pretrained CLIP, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Training commands run by the tests write no DVCLive curves (by default under the working
# folder, here the checkout: logs/curves/); tests/test_progress.py turns them on where it looks.
os.environ.setdefault("FLYP_CURVES", "off")
# The cores shared among pytest-xdist's workers (one each on two cores), so that they do not fight
# over them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

ROOT = Path(__file__).resolve().parents[1]


def set_embedded(params: dict, *, sweep: dict | None = None, pretrain_seeds=None) -> dict:
    """``params`` with the embedded preset's ``sweep`` (``{}``: none) and pretraining seeds (a
    list, or one seed as ``seed``) set; None leaves a setting as params.yaml has it."""
    embedded = params["presets"]["embedded"]
    if sweep == {}:
        embedded.pop("sweep", None)
    elif sweep is not None:
        embedded["sweep"] = sweep
    if isinstance(pretrain_seeds, int):
        embedded["pretrain"].pop("seeds", None)
        embedded["pretrain"]["seed"] = pretrain_seeds
    elif pretrain_seeds is not None:
        embedded["pretrain"]["seeds"] = pretrain_seeds
    return params


def training_methods(names=None) -> set[str]:
    """The registered methods (or those of ``names``) that train (flyp.methods.Method.trains),
    read from the registry, so that a new method file needs no test edit."""
    from flyp.workflow.catalog import method_info, method_names

    return {m for m in (names if names is not None else method_names()) if method_info(m).trains}


def seeded_methods(names=None) -> set[str]:
    """The registered methods (or those of ``names``) whose full run depends on its seed."""
    from flyp.workflow.catalog import method_info, method_names

    return {m for m in (names if names is not None else method_names()) if method_info(m).seeded}


TINY = dict(
    seed=0, image_size=32, pretrain_size=300, train_size=96, val_size=48, test_size=48, ood_size=24
)


@pytest.fixture(scope="session")
def tiny_tables(tmp_path_factory) -> Path:
    """The embedded benchmark's tables at a tiny size (seconds to draw)."""
    from flyp.datasets import get_benchmark
    from flyp.datasets.manifest import write_manifest

    out = tmp_path_factory.mktemp("tables")
    bench = get_benchmark("embedded")
    bench.prepare(out, **TINY)
    write_manifest(out, bench, TINY)
    return out


@pytest.fixture(scope="session")
def tiny_captions(tiny_tables, tmp_path_factory) -> Path:
    from flyp.captions import make_caption_tables
    from flyp.datasets import get_benchmark, table_path

    out = tmp_path_factory.mktemp("captions")
    make_caption_tables(
        get_benchmark("embedded"),
        table_path(tiny_tables, "train"),
        table_path(out, "captions"),
        table_path(out, "templates"),
    )
    return out


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A randomly initialised small CLIP saved as a pretrained checkpoint (no training)."""
    from flyp.models import create_clip, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "pretrained.safetensors"
    save_checkpoint(path, "flyp-tiny-rn10t", create_clip("flyp-tiny-rn10t"), info={"stage": "test"})
    return path


@pytest.fixture(scope="session")
def smoke_seeds_and_sweep(tmp_path_factory):
    """One smoke-scale project built to the table (Snakemake, as a user runs it): two pretraining
    seeds (run i of each method starts from the i-th), two finetuning seeds and a two-point lr
    grid for FLYP, no few-shot runs. Read by the end-to-end tests of tests/test_pretrain_seeds.py
    and tests/test_sweep.py (xdist group "smoke-seeds-sweep": one build for both). Returns the
    project, its environment and the finished `snakemake -p` run."""
    import subprocess

    from tests.test_sweep import _project

    base = tmp_path_factory.mktemp("seeds-sweep")
    root = _project(
        base,
        scale="smoke",
        seeds=[0, 1],
        methods=["zeroshot", "lp", "ft", "flyp"],
        alphas=[0.0, 0.5, 1.0],
        fewshot=False,
        pretrain_seeds=[0, 1],
        sweep={"flyp": {"lr": [1e-5, 1e-3]}},
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLYP_CACHE": str(base / "cache")}
    done = subprocess.run(
        ["snakemake", "-p", "--cores", "2", "results/table.csv"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return root, env, done


@pytest.fixture()
def ctx(tiny_tables, tiny_captions, tiny_pretrained):
    """A method context on the tiny benchmark and the untrained tiny CLIP."""
    from flyp.datasets import get_benchmark
    from flyp.methods import Context
    from flyp.models import create_clip, get_tokenizer, image_transforms, load_checkpoint

    pretrained = load_checkpoint(tiny_pretrained)
    train_tf, eval_tf = image_transforms(create_clip(pretrained.model_name))
    return Context(
        benchmark=get_benchmark("embedded"),
        pretrained=pretrained,
        data_dir=tiny_tables,
        captions_dir=tiny_captions,
        device=torch.device("cpu"),
        tokenizer=get_tokenizer(pretrained.model_name),
        train_transform=train_tf,
        eval_transform=eval_tf,
        seed=0,
    )


@pytest.fixture()
def dataloaders(monkeypatch) -> list:
    """(dataset type name, worker count) of every DataLoader made while the test runs."""
    made = []
    real = torch.utils.data.DataLoader

    def spy(dataset, *args, **kwargs):
        made.append((type(dataset).__name__, kwargs.get("num_workers", 0)))
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", spy)
    return made
