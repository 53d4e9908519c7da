"""Run one method: build its context, train (or not), write the selected classifier checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from flyp import distributed
from flyp.datasets import Benchmark, get_benchmark
from flyp.datasets.manifest import data_hash
from flyp.datasets.resized import MANIFEST as RESIZED_MANIFEST
from flyp.datasets.resized import check_crop, open_resized
from flyp.evalcache import open_eval_cache
from flyp.io import UserError, read_json, sha256_file, write_text
from flyp.methods import Context, get_method
from flyp.models import (
    Checkpoint,
    carried_info,
    checkpoint_transforms,
    get_tokenizer,
    load_checkpoint,
    preprocess_cfg,
    save_checkpoint,
)
from flyp.progress import Watch
from flyp.provenance import code_revision
from flyp.training import (
    PROTOCOL_DEFAULTS,
    TrainConfig,
    fit,
    log_csv_text,
    result_config,
    selection_info,
    val_columns,
)


def method_context(
    bench: Benchmark,
    pretrained: Checkpoint,
    cfg: TrainConfig,
    *,
    data_dir: Path,
    captions_dir: Path,
    device: torch.device,
    options: dict,
    shots: int | None,
    draw: int,
    eval_cache: Path | None,
    train_dir: Path | None = None,
) -> Context:
    """What a method builds its classifier or task from: the benchmark, the pretrained model with
    its tokenizer and its own preprocessing, the data and the run's settings. ``train_dir``: a
    resized copy of the train table (``flyp resize``), checked against ``data_dir``'s."""
    tokenizer = get_tokenizer(pretrained.model_name)
    train_tf, eval_tf = checkpoint_transforms(pretrained)  # the pretrained weights' preprocessing
    if train_dir is not None:
        check_crop(open_resized(train_dir, data_dir), train_dir, preprocess_cfg(pretrained)["size"])
    return Context(
        benchmark=bench,
        pretrained=pretrained,
        data_dir=Path(data_dir),
        captions_dir=Path(captions_dir),
        device=device,
        tokenizer=tokenizer,
        train_transform=train_tf,
        eval_transform=eval_tf,
        seed=cfg.seed,
        options=options,
        shots=shots,
        draw=draw,
        workers=cfg.num_workers,
        eval_cache=open_eval_cache(eval_cache, data_dir, preprocess_cfg(pretrained)),
        train_dir=None if train_dir is None else Path(train_dir),
    )


def run_info(
    ctx: Context,
    cfg: TrainConfig,
    method,
    method_name: str,
    benchmark_name: str,
    pretrained_path: Path,
) -> dict:
    """The checkpoint's record of the run ``ctx`` describes: the method, benchmark and settings,
    the pretrained weights and the data it starts from (their hashes) and the code revision."""
    return {
        "method": method_name,
        "benchmark": benchmark_name,
        "seed": ctx.seed,
        "shots": ctx.shots,
        "draw": ctx.draw if ctx.shots else None,
        "head_from_text": method.head_from_text,
        "config": {**result_config(cfg), "options": ctx.options},
        "pretrained": ctx.pretrained.info,
        "pretrained_sha256": sha256_file(pretrained_path),
        "data_hash": data_hash(ctx.data_dir),
        **resized_info(ctx.train_dir),
        "code": code_revision(),
        **carried_info(ctx.pretrained),
    }


def resized_info(train_dir: Path | None) -> dict:
    """A run that trained on a resized copy records it: its side, JPEG quality and table hash
    (none otherwise, so that other checkpoints' records are as they were)."""
    if train_dir is None:
        return {}
    manifest = read_json(Path(train_dir) / RESIZED_MANIFEST)
    table = manifest["tables"]["train"]
    keys = {"side": manifest["side"], "quality": manifest["quality"], "sha256": table["sha256"]}
    return {"train_data": {**keys, "source": table["source"]}}


def score_untrained(method, ctx: Context, info: dict, *, out: Path, log_csv: Path) -> dict:
    """For a method that does not train: its classifier scored on ID-val and written as the
    selected checkpoint (epoch 0), by rank 0 alone. Its result depends on no training setting,
    so its record keeps none."""
    if not distributed.is_main():  # nothing to share out: rank 0 alone scores and writes
        return {"best_epoch": 0, "best_val": None}
    info["config"] = {"seed": ctx.seed, "options": ctx.options}
    classifier = method.classifier(ctx)
    val = ctx.validate(classifier)
    info.update(selection_info(0, val), select="metric", include_start=False, **ctx.notes)
    save_checkpoint(out, ctx.model_name, classifier.clip, classifier.head, info)
    write_text(log_csv, log_csv_text([{"epoch": 0, "step": 0, **val_columns(val), "seconds": "0"}]))
    return {"best_epoch": 0, "best_val": val}


def finetune(
    benchmark_name: str,
    data_dir: Path,
    captions_dir: Path,
    pretrained_path: Path,
    method_name: str,
    cfg: TrainConfig,
    *,
    options: dict,
    out: Path,
    log_csv: Path,
    device: torch.device,
    shots: int | None = None,
    draw: int = 0,
    protocol: dict | None = None,
    eval_cache: Path | None = None,
    train_dir: Path | None = None,
    keep_last: bool = False,
    log: Callable[[str], None] = print,
    watch: Watch | None = None,
) -> dict:
    """Finetune and write the selected checkpoint; ID-val is read from ``eval_cache`` (a
    ``flyp evalcache`` folder of the pretrained model's preprocessing) when given. ``protocol``:
    a few-shot run's ``tie`` and ``augmentation``; ``keep_last``: a full run keeps its last epoch
    (see ``selection``); ``train_dir``: train on this resized copy of the train table; ``watch``:
    its progress lines and curves (flyp.progress)."""
    bench = get_benchmark(benchmark_name)
    method = get_method(method_name)
    method.check_options(options)
    pretrained = load_checkpoint(pretrained_path)
    torch.manual_seed(cfg.seed)  # any fresh parameters a method creates
    ctx = method_context(
        bench,
        pretrained,
        cfg,
        data_dir=data_dir,
        captions_dir=captions_dir,
        device=device,
        options=options,
        shots=shots,
        draw=draw,
        eval_cache=eval_cache,
        train_dir=train_dir,
    )
    info = run_info(ctx, cfg, method, method_name, benchmark_name, pretrained_path)
    if not method.trains:
        return score_untrained(method, ctx, info, out=out, log_csv=log_csv)
    task = method.task(ctx)
    picks = selection(shots, keep_last, **(protocol or {}))
    info.update(ctx.notes, **picks)
    where = {"out": out, "log_csv": log_csv, "device": device}
    result = fit(task, cfg, info=info, progress=log, watch=watch, **where, **picks)
    return {"best_epoch": result.best_epoch, "best_val": result.best_val}


def selection(
    shots: int | None,
    keep_last: bool = False,
    tie: str = "earlier",
    augmentation: str = "per_epoch",
) -> dict:
    """How ``fit`` picks the epoch (and trains). Full runs: the best ID-val score with the
    benchmark's own ID metric, or with ``keep_last`` the last epoch (the FLYP reference's ImageNet
    protocol: it reports a fixed epoch and selects nothing; presets.<name>.selection:
    last_epoch). Few-shot runs follow the FLYP reference: among epochs 0..E (0 = the starting
    model) the lowest cross-entropy on the k-per-class val sample (docs/reference.md,
    "Hyperparameters and protocol"); ``tie`` and ``augmentation`` (flyp.settings.TIES,
    AUGMENTATIONS) are theirs, in the result only when not the default (the checkpoint records
    them). A full run takes neither."""
    protocol = {"tie": tie, "augmentation": augmentation}
    changed = {k: v for k, v in protocol.items() if v != PROTOCOL_DEFAULTS[k]}
    if shots is None:
        if changed:
            raise UserError(
                f"{', '.join(changed)}: settings of the few-shot protocol; a full run "
                f"(no --shots) takes none"
            )
        return {"select": "last" if keep_last else "metric", "include_start": False}
    return {"select": "val_loss", "include_start": True, **changed}
