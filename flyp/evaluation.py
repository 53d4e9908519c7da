"""Evaluation: logits of a classifier on a test set, and the metrics computed from them."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor, object], float]] = {}


def register_metric(name: str):
    def wrap(fn):
        METRICS[name] = fn
        return fn

    return wrap


@register_metric("accuracy")
def accuracy(logits: torch.Tensor, labels: torch.Tensor, table=None) -> float:
    """Top-1 accuracy. logits (N, C), labels (N,)."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


class CachedEvalSet(torch.utils.data.Dataset):
    """A test set whose (deterministic) eval transform is applied once and kept in memory; used
    for the ID-val set, which is scored after every epoch."""

    def __init__(self, dataset):
        self.images = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (N, 3, H, W)
        self.labels = dataset.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


@torch.no_grad()
def predict(classifier: nn.Module, dataset, *, batch_size: int = 256, num_workers: int = 0,
            device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C), labels (N,)) of ``classifier`` on ``dataset``."""
    device = device or next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    logits, labels = [], []
    for images, y in loader:
        logits.append(classifier(images.to(device)).float().cpu())
        labels.append(y)
    classifier.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def score(logits: torch.Tensor, labels: torch.Tensor, eval_set, table=None) -> float:
    """The eval set's metric, after mapping logits to its classes if it needs that."""
    if eval_set.project_logits is not None:
        logits = eval_set.project_logits(logits)
    return METRICS[eval_set.metric](logits, labels, table)


def evaluate_checkpoint(benchmark_name: str, data_dir, checkpoint, *, metrics_out, provenance_out,
                        batch_size: int = 256, num_workers: int = 0,
                        device: torch.device | None = None, log=print) -> dict:
    """Score ``checkpoint`` on every eval set of the benchmark.

    Writes ``metrics_out`` ({set: value, ..., "avg_ood": mean over OOD sets}) and
    ``provenance_out`` (checkpoint hash, data hash, params hash, seed, selected epoch).
    """
    from pathlib import Path

    from flyp.datasets import get_benchmark, table_path
    from flyp.datasets.manifest import data_hash
    from flyp.datasets.tables import ImageTable
    from flyp.io import sha256_file, sha256_json, write_json
    from flyp.models import classifier_from_checkpoint, image_transforms, load_checkpoint

    bench = get_benchmark(benchmark_name)
    ckpt = load_checkpoint(checkpoint)
    classifier = classifier_from_checkpoint(ckpt).to(device or "cpu")
    _, eval_tf = image_transforms(classifier.clip)
    metrics = {}
    for eval_set in bench.eval_sets:
        dataset = ImageTable(table_path(data_dir, eval_set.name), eval_tf)
        logits, labels = predict(classifier, dataset, batch_size=batch_size,
                                 num_workers=num_workers, device=device)
        metrics[eval_set.name] = score(logits, labels, eval_set, dataset.df)
        log(f"{eval_set.name}: {eval_set.metric} {metrics[eval_set.name]:.4f} "
            f"({len(dataset)} images)")
    ood = [metrics[s.name] for s in bench.ood_sets]
    if ood:
        metrics["avg_ood"] = sum(ood) / len(ood)
    info = ckpt.info
    provenance = {
        "method": info.get("method"),
        "best_epoch": info.get("best_epoch"),
        "best_val_accuracy": info.get("best_val_accuracy"),
        "seed": info.get("seed"),
        "checkpoint_sha256": sha256_file(checkpoint),
        "data_hash": data_hash(Path(data_dir)),
        "params_hash": sha256_json({"method": info.get("method"), "config": info.get("config"),
                                    "pretrained": info.get("pretrained")}),
    }
    write_json(provenance_out, provenance)
    write_json(metrics_out, metrics)
    return metrics
