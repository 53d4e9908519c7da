"""Scoring: a classifier's logits on an eval set and the metrics computed from them. Shared by
model selection during training (ID-val) and by test-set evaluation (``flyp.evaluation``), so that
a change to how test results are reported does not rerun training."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from flyp.devices import ARITHMETICS, arithmetic, tf32_scope
from flyp.loading import make_loader, to_device
from flyp.progress import progress_bar

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
    excluded (FMoW, as WILDS scores it: every other region counts, "nan" included, the countries
    WILDS's mapping gives no region; flyp.datasets.wilds.fmow_regions)."""
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


@register_metric("worst_group_accuracy")
def worst_group_accuracy(logits: torch.Tensor, labels: torch.Tensor, table=None) -> float:
    """Lowest accuracy over the groups of ``table["group"]`` (a user's own data with the
    ``worst_group`` metric: flyp.datasets.owndata; every group with images counts)."""
    if table is None or "group" not in table:
        raise ValueError("worst_group_accuracy needs the table's 'group' column")
    groups = list(table["group"])
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} predictions")
    code = {name: i for i, name in enumerate(sorted(set(groups)))}
    group = torch.tensor([code[g] for g in groups])  # (N,) group index of each image
    correct = (logits.argmax(dim=1) == labels).float()
    hits = torch.zeros(len(code)).scatter_reduce(0, group, correct, reduce="sum")
    counts = torch.bincount(group, minlength=len(code)).float()
    return (hits / counts).min().item()


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

    held_as_tensors = True  # flyp.loading.make_loader reads it in the main process

    def __init__(self, dataset):
        self.images = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (N, 3, H, W)
        self.labels = dataset.labels
        self.df = getattr(dataset, "df", None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def predict(
    classifier: nn.Module,
    dataset,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C), labels (N,)) of ``classifier`` on ``dataset``."""
    (logits,), labels = predict_many(
        [classifier],
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        precision=precision,
    )
    return logits, labels


EVAL_PRECISIONS = ARITHMETICS  # fp32; TF32 matmuls on CUDA; bf16 autocast


@contextlib.contextmanager
def eval_precision(precision: str, device: torch.device):
    """The arithmetic of an evaluation: fp32 (the default, the reference's), TF32 matmuls and
    convolutions on CUDA (no effect on a CPU), or bf16 autocast."""
    if precision not in EVAL_PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {EVAL_PRECISIONS}")
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    with tf32_scope(precision == "tf32"):
        yield


def eval_arithmetic(precision: str, device: torch.device | str) -> str:
    """The arithmetic ``eval_precision(precision, device)`` computes in (flyp.devices.arithmetic):
    ``tf32`` only on CUDA."""
    return arithmetic(precision, precision == "tf32", device)


@torch.no_grad()
def predict_many(
    classifiers: list[nn.Module],
    dataset,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | None = None,
    precision: str = "fp32",
    desc: str | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """([logits (N, C) of each classifier], labels (N,)) in one pass over ``dataset``: each batch
    is loaded (decoded, transformed, copied to the device) once and seen by every classifier while
    it is there. Each classifier's logits are those ``predict`` gives it alone. ``desc``: show the
    pass's progress under that name (flyp.progress.progress_bar; counted on the host, no sync)."""
    device = torch.device(device or next(classifiers[0].parameters()).device)
    modes = [c.training for c in classifiers]
    for c in classifiers:
        c.eval()
    loader = make_loader(dataset, batch_size=batch_size, workers=num_workers, device=device)
    logits, labels = [[] for _ in classifiers], []
    bar = progress_bar(total=len(dataset), unit="img", desc=desc, disable=desc is None)
    with eval_precision(precision, device), bar:
        for images, y in loader:
            images = to_device(images, device)
            for out, classifier in zip(logits, classifiers, strict=True):
                out.append(classifier(images).float())  # kept on the device: no sync a batch
            labels.append(y)
            bar.update(len(y))
    for c, mode in zip(classifiers, modes, strict=True):
        c.train(mode)
    return [torch.cat(out).cpu() for out in logits], torch.cat(labels)


def score(logits: torch.Tensor, labels: torch.Tensor, eval_set, table=None) -> float:
    """The eval set's metric, after mapping logits to its classes if it needs that."""
    if eval_set.project_logits is not None:  # the table says which classes the set has
        logits = eval_set.project_logits(logits, table)
    return METRICS[eval_set.metric](logits, labels, table)


def validation_scores(logits: torch.Tensor, labels: torch.Tensor, id_set, table=None) -> dict:
    """What model selection reads on ID-val: the score with the benchmark's own ID metric (so
    iWildCam selects on macro-F1, not accuracy) and the cross-entropy of the logits (the few-shot
    protocol keeps the epoch with the lowest)."""
    return {
        "val_metric": id_set.metric,
        "val_score": score(logits, labels, id_set, table),
        "val_loss": F.cross_entropy(logits, labels.long()).item(),
    }
