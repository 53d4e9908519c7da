"""Frozen image features, computed once per (model, dataset) and reused by every linear probe.

By default L2-normalised, every split under the eval transform. The FLYP reference's linear probe
(``src/models/linear_lbfgs.py``) instead fits raw ``encode_image`` output and takes the train
features through the train transform (one random crop per image, computed once):
``normalize=False`` and ``train_transform=True``. The train crops are seeded per image (seed 0,
the image's index), so the file does not depend on the worker count. The file records whether its
features are normalised (metadata ``normalize``), so that a probe's head is applied to the same
kind of features."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flyp.datasets import table_path
from flyp.datasets.tables import ImageTable
from flyp.devices import tf32_scope
from flyp.io import UserError, atomic_path
from flyp.loading import make_loader, to_device
from flyp.models import clip_from_checkpoint, image_transforms, load_checkpoint
from flyp.training import SeededItems

SPLITS = ["train", "val"]


@torch.no_grad()
def image_features(
    clip, dataset, batch_size: int = 256, device=None, num_workers: int = 0, normalize=True
) -> torch.Tensor:
    """Image embeddings (N, D) of ``dataset``, L2-normalised unless ``normalize`` is False, in
    fp32 (TF32 off, on CUDA, whatever the process's flags say)."""
    device = device or next(clip.parameters()).device
    clip.eval()
    loader = make_loader(dataset, batch_size=batch_size, workers=num_workers, device=device)
    out = []
    with tf32_scope(False):
        for x, _ in loader:
            emb = clip.encode_image(to_device(x, device))
            out.append(torch.nn.functional.normalize(emb, dim=-1) if normalize else emb)
    return torch.cat(out).cpu()


def write_features(
    checkpoint: Path,
    data_dir: Path,
    out: Path,
    device=None,
    num_workers: int = 0,
    *,
    normalize: bool = True,
    train_transform: bool = False,
) -> None:
    clip = clip_from_checkpoint(load_checkpoint(checkpoint)).to(device or "cpu")
    train_tf, eval_tf = image_transforms(clip)
    tensors = {}
    for split in SPLITS:
        augment = split == "train" and train_transform
        table = ImageTable(table_path(data_dir, split), train_tf if augment else eval_tf)
        dataset = SeededItems(table) if augment else table  # seed 0: crop of image i fixed
        tensors[f"{split}.x"] = image_features(
            clip, dataset, device=device, num_workers=num_workers, normalize=normalize
        )
        tensors[f"{split}.y"] = table.labels
    # Metadata only when it departs from the default: default files keep their bytes.
    options = {} if normalize and not train_transform else {"normalize": normalize}
    if train_transform:
        options["train_transform"] = True
    metadata = {"flyp_features": json.dumps(options, sort_keys=True)} if options else None
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _check_file(path: Path) -> None:
    if not Path(path).is_file():
        raise UserError(f"{path}: features file not found (run `flyp features` first)")


def read_features(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (features (N, D), labels (N,))}"""
    _check_file(path)
    t = load_file(str(path))
    return {s: (t[f"{s}.x"], t[f"{s}.y"]) for s in SPLITS}


def features_options(path: Path) -> dict:
    """How a features file was made: {"normalize": bool, "train_transform": bool}."""
    _check_file(path)
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads((f.metadata() or {}).get("flyp_features", "{}"))
    return {"normalize": True, "train_transform": False, **stored}
