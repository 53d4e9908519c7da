"""Evaluation: logits of a classifier on a test set, and the metrics computed from them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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


@register_metric("macro_f1")
def macro_f1(logits: torch.Tensor, labels: torch.Tensor, table=None) -> float:
    """Mean F1 over the classes present in ``labels`` (iWildCam; WILDS's F1(average="macro"),
    i.e. sklearn's f1_score with labels=unique(y_true)). A class that is only predicted adds no
    F1 of its own; its predictions still cost the true classes their recall."""
    preds, labels = logits.argmax(dim=1), labels.long()
    n = int(max(preds.max(), labels.max())) + 1
    tp = torch.bincount(labels[preds == labels], minlength=n).float()  # (n,)
    n_true = torch.bincount(labels, minlength=n).float()
    n_pred = torch.bincount(preds, minlength=n).float()
    present = n_true > 0
    f1 = 2 * tp[present] / (n_true[present] + n_pred[present])  # 2TP / (2TP + FP + FN)
    return f1.mean().item()


@register_metric("worst_region_accuracy")
def worst_region_accuracy(logits: torch.Tensor, labels: torch.Tensor, table=None) -> float:
    """Lowest accuracy over the regions of ``table["region"]`` that have images, region "Other"
    excluded (FMoW, as WILDS scores it)."""
    if table is None or "region" not in table:
        raise ValueError("worst_region_accuracy needs the test table's 'region' column")
    regions = list(table["region"])
    if len(regions) != len(labels):
        raise ValueError(f"{len(regions)} regions for {len(labels)} predictions")
    names = sorted(set(regions))
    code = {name: i for i, name in enumerate(names)}
    group = torch.tensor([code[r] for r in regions])  # (N,) region index of each image
    correct = (logits.argmax(dim=1) == labels).float()
    hits = torch.zeros(len(names)).scatter_reduce(0, group, correct, reduce="sum")
    counts = torch.bincount(group, minlength=len(names)).float()
    scored = [i for i, name in enumerate(names) if name != "Other" and counts[i] > 0]
    if not scored:
        raise ValueError("no region other than 'Other' to score")
    return min((hits[i] / counts[i]).item() for i in scored)


CACHE_BYTES = 1 << 30  # keep transformed eval images in memory up to this size (1 GiB)


def maybe_cached(dataset):
    """``dataset`` as a CachedEvalSet when its transformed images fit in CACHE_BYTES (the
    embedded benchmark's do; ImageNet's 10,000 ID-val images at 224 px would take 6 GB)."""
    if len(dataset) == 0:
        return dataset
    one = dataset[0][0]
    if one.numel() * one.element_size() * len(dataset) > CACHE_BYTES:
        return dataset
    return CachedEvalSet(dataset)


class CachedEvalSet(torch.utils.data.Dataset):
    """A test set whose (deterministic) eval transform is applied once and kept in memory; used
    for the ID-val set, which is scored after every epoch."""

    def __init__(self, dataset):
        self.images = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (N, 3, H, W)
        self.labels = dataset.labels
        self.df = getattr(dataset, "df", None)

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
    if eval_set.project_logits is not None:  # the table says which classes the set has
        logits = eval_set.project_logits(logits, table)
    return METRICS[eval_set.metric](logits, labels, table)


def validation_scores(logits: torch.Tensor, labels: torch.Tensor, id_set, table=None) -> dict:
    """What model selection reads on ID-val: the score with the benchmark's own ID metric (so
    iWildCam selects on macro-F1, not accuracy) and the cross-entropy of the logits (the few-shot
    protocol keeps the epoch with the lowest)."""
    return {"val_metric": id_set.metric, "val_score": score(logits, labels, id_set, table),
            "val_loss": F.cross_entropy(logits, labels.long()).item()}


def evaluate_checkpoint(benchmark_name: str, data_dir, checkpoint, *, metrics_out, provenance_out,
                        batch_size: int = 256, num_workers: int = 0,
                        device: torch.device | None = None, log=print) -> dict:
    """Score ``checkpoint`` on every eval set of the benchmark.

    Writes ``metrics_out`` ({set: value, ..., "avg_ood": mean over OOD sets}) and
    ``provenance_out`` (checkpoint hash, data hash, params hash, seed, selected epoch).
    """
    from flyp.datasets import get_benchmark
    from flyp.io import write_json
    from flyp.models import classifier_from_checkpoint, load_checkpoint

    bench = get_benchmark(benchmark_name)
    ckpt = load_checkpoint(checkpoint)
    classifier = classifier_from_checkpoint(ckpt).to(device or "cpu")
    metrics = evaluate_classifier(classifier, bench, data_dir, batch_size=batch_size,
                                  num_workers=num_workers, device=device, log=log)
    write_json(provenance_out, provenance(ckpt, checkpoint, data_dir))
    write_json(metrics_out, metrics)
    return metrics


def evaluate_classifier(classifier, bench, data_dir, *, batch_size: int = 256,
                        num_workers: int = 0, device=None, log=print,
                        cache: dict | None = None) -> dict:
    """{eval set: metric, ..., "avg_ood": mean over the OOD sets} of ``classifier``.

    ``cache``: a dict kept across calls (e.g. every alpha of a weight ensemble) in which small eval
    sets are kept decoded and transformed."""
    from flyp.datasets import table_path
    from flyp.datasets.tables import ImageTable
    from flyp.models import image_transforms

    _, eval_tf = image_transforms(classifier.clip)
    metrics = {}
    for eval_set in bench.eval_sets:
        if cache is not None and eval_set.name in cache:
            dataset = cache[eval_set.name]
        else:
            dataset = ImageTable(table_path(data_dir, eval_set.name), eval_tf)
            if cache is not None:
                dataset = cache.setdefault(eval_set.name, maybe_cached(dataset))
        logits, labels = predict(classifier, dataset, batch_size=batch_size,
                                 num_workers=num_workers, device=device)
        metrics[eval_set.name] = score(logits, labels, eval_set, dataset.df)
        log(f"{eval_set.name}: {eval_set.metric} {metrics[eval_set.name]:.4f} "
            f"({len(dataset)} images)")
    ood = [metrics[s.name] for s in bench.ood_sets]
    if ood:
        metrics["avg_ood"] = sum(ood) / len(ood)
    return metrics


def provenance(ckpt, checkpoint_path, data_dir) -> dict:
    """Where a result comes from: checkpoint, data and parameter hashes, seed, selected epoch (and
    the ID-val score it was selected on, with the metric's name)."""
    from pathlib import Path

    from flyp.datasets.manifest import data_hash
    from flyp.io import sha256_file, sha256_json

    info = ckpt.info
    return {
        "method": info.get("method"),
        "best_epoch": info.get("best_epoch"),
        "select": info.get("select"),  # what picked the epoch: "metric" (val_metric) or "val_loss"
        "val_metric": info.get("val_metric"),
        "best_val_score": info.get("best_val_score"),
        "seed": info.get("seed"),
        "shots": info.get("shots"),
        "draw": info.get("draw"),
        "checkpoint_sha256": sha256_file(checkpoint_path),
        "data_hash": data_hash(Path(data_dir)),
        "params_hash": sha256_json({"method": info.get("method"), "config": info.get("config"),
                                    "pretrained": info.get("pretrained")}),
    }
