"""Frozen image features, computed once per (model, dataset) and reused by every linear probe."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flyp.datasets import table_path
from flyp.datasets.tables import ImageTable
from flyp.devices import tf32_scope
from flyp.io import UserError, atomic_path
from flyp.loading import make_loader, to_device
from flyp.models import clip_from_checkpoint, image_transforms, load_checkpoint

SPLITS = ["train", "val"]


@torch.no_grad()
def image_features(
    clip, dataset, batch_size: int = 256, device=None, num_workers: int = 0
) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) under the eval transform, in fp32 (TF32 off, on
    CUDA, whatever the process's flags say)."""
    device = device or next(clip.parameters()).device
    clip.eval()
    loader = make_loader(dataset, batch_size=batch_size, workers=num_workers, device=device)
    with tf32_scope(False):
        out = [
            torch.nn.functional.normalize(clip.encode_image(to_device(x, device)), dim=-1)
            for x, _ in loader
        ]
    return torch.cat(out).cpu()


def write_features(
    checkpoint: Path, data_dir: Path, out: Path, device=None, num_workers: int = 0
) -> None:
    clip = clip_from_checkpoint(load_checkpoint(checkpoint)).to(device or "cpu")
    _, eval_tf = image_transforms(clip)
    tensors = {}
    for split in SPLITS:
        table = ImageTable(table_path(data_dir, split), eval_tf)
        tensors[f"{split}.x"] = image_features(clip, table, device=device, num_workers=num_workers)
        tensors[f"{split}.y"] = table.labels
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp))


def read_features(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (features (N, D), labels (N,))}"""
    if not Path(path).is_file():
        raise UserError(f"{path}: features file not found (run `flyp features` first)")
    t = load_file(str(path))
    return {s: (t[f"{s}.x"], t[f"{s}.y"]) for s in SPLITS}
