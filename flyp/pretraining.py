"""Contrastive pretraining of a small CLIP on the embedded benchmark's captioned images.

This stands in for the web-scale pretraining of the real CLIP, so that every later stage starts from
a model with real zero-shot skill. The last epoch is kept: the ID-val zero-shot score is logged
for monitoring only, never used to choose the pretrained model. It is scored with one fixed
template, not the benchmark's: those belong to finetuning and evaluation, and changing them must
not rerun the pretraining.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flyp.contrastive import CaptionedImages, ContrastiveTask
from flyp.datasets import Benchmark, table_path
from flyp.datasets.tables import ImageTable
from flyp.io import UserError
from flyp.models import (
    ImageClassifier,
    build_zero_shot_head,
    create_clip,
    get_tokenizer,
    image_transforms,
)
from flyp.provenance import code_revision
from flyp.scoring import maybe_cached, predict, validation_scores
from flyp.training import TrainConfig, fit

MONITOR_TEMPLATES = ["a photo of a {}."]


class PretrainTask(ContrastiveTask):
    def __init__(
        self, clip, model_name, device, train_data, val_set, benchmark, tokenizer, workers: int = 0
    ):
        super().__init__(clip, model_name, device)
        self.train_data, self.val_set = train_data, val_set
        self.benchmark, self.tokenizer, self.workers = benchmark, tokenizer, workers

    def captions(self, batch):
        return batch  # (images, tokens)

    def validate(self) -> dict:
        head = build_zero_shot_head(
            self.module, self.tokenizer, self.benchmark.classnames, MONITOR_TEMPLATES
        )
        logits, labels = predict(
            ImageClassifier(self.module, head),
            self.val_set,
            device=self.device,
            num_workers=self.workers,
        )
        return validation_scores(
            logits, labels, self.benchmark.id_set, getattr(self.val_set, "df", None)
        )


def pretrain(
    benchmark: Benchmark,
    data_dir: Path,
    model_name: str,
    cfg: TrainConfig,
    *,
    out: Path,
    log_csv: Path,
    device: torch.device,
    log=print,
    watch=None,
) -> None:
    torch.manual_seed(cfg.seed)  # model initialisation
    clip = create_clip(model_name)
    tokenizer = get_tokenizer(model_name)
    train_tf, eval_tf = image_transforms(clip)
    table = ImageTable(table_path(data_dir, "pretrain"), train_tf)
    if "caption" not in table.df.columns:
        raise UserError(f"{table.path}: a pretraining table needs a 'caption' column")
    tokens = tokenizer(table.df["caption"].tolist())  # (N, L)
    val = maybe_cached(ImageTable(table_path(data_dir, "val"), eval_tf))
    task = PretrainTask(
        clip,
        model_name,
        device,
        CaptionedImages(table, tokens),
        val,
        benchmark,
        tokenizer,
        cfg.num_workers,
    )
    info = {
        "stage": "pretrain",
        "benchmark": benchmark.name,
        "model_name": model_name,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "code": code_revision(),
    }
    fit(
        task,
        cfg,
        out=out,
        log_csv=log_csv,
        device=device,
        info=info,
        select="last",
        progress=log,
        watch=watch,
    )
