"""Run one method: build its context, train (or not), write the selected classifier checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from flyp import distributed
from flyp.datasets import get_benchmark
from flyp.datasets.manifest import data_hash
from flyp.evalcache import open_eval_cache
from flyp.io import sha256_file, write_text
from flyp.methods import Context, get_method
from flyp.models import (
    carried_info,
    checkpoint_transforms,
    get_tokenizer,
    load_checkpoint,
    preprocess_cfg,
    save_checkpoint,
)
from flyp.provenance import code_revision
from flyp.training import (
    TrainConfig,
    fit,
    log_csv_text,
    result_config,
    selection_info,
    val_columns,
)


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
    eval_cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Finetune and write the selected checkpoint; ID-val is read from ``eval_cache`` (a
    ``flyp evalcache`` folder of the pretrained model's preprocessing) when given."""
    bench = get_benchmark(benchmark_name)
    method = get_method(method_name)
    method.check_options(options)
    pretrained = load_checkpoint(pretrained_path)
    torch.manual_seed(cfg.seed)  # any fresh parameters a method creates
    tokenizer = get_tokenizer(pretrained.model_name)
    train_tf, eval_tf = checkpoint_transforms(pretrained)  # the pretrained weights' preprocessing
    ctx = Context(
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
    )
    info = {
        "method": method_name,
        "benchmark": benchmark_name,
        "seed": cfg.seed,
        "shots": shots,
        "draw": draw if shots else None,
        "head_from_text": method.head_from_text,
        "config": {**result_config(cfg), "options": options},
        "pretrained": pretrained.info,
        "pretrained_sha256": sha256_file(pretrained_path),
        "data_hash": data_hash(data_dir),
        "code": code_revision(),
        **carried_info(pretrained),
    }

    if not method.trains:  # its result depends on no training setting, so it records none
        if not distributed.is_main():  # nothing to share out: rank 0 alone scores and writes
            return {"best_epoch": 0, "best_val": None}
        info["config"] = {"seed": cfg.seed, "options": options}
        classifier = method.classifier(ctx)
        val = ctx.validate(classifier)
        info.update(selection_info(0, val), select="metric", include_start=False, **ctx.notes)
        save_checkpoint(out, ctx.model_name, classifier.clip, classifier.head, info)
        write_text(
            log_csv, log_csv_text([{"epoch": 0, "step": 0, **val_columns(val), "seconds": "0"}])
        )
        return {"best_epoch": 0, "best_val": val}

    task = method.task(ctx)
    info.update(ctx.notes, **selection(shots))
    result = fit(
        task,
        cfg,
        out=out,
        log_csv=log_csv,
        device=device,
        info=info,
        progress=log,
        **selection(shots),
    )
    return {"best_epoch": result.best_epoch, "best_val": result.best_val}


def selection(shots: int | None) -> dict:
    """How ``fit`` picks the epoch. Full runs: the best ID-val score with the benchmark's own ID
    metric. Few-shot runs follow the FLYP reference: among epochs 0..E (0 = the starting model)
    the lowest cross-entropy on the k-per-class val sample (docs/reference.md, "Hyperparameters
    and protocol")."""
    if shots is None:
        return {"select": "metric", "include_start": False}
    return {"select": "val_loss", "include_start": True}
