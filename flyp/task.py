"""The ``Task`` that ``flyp.training.fit`` optimises, as each method (and pretraining) defines
it; a module of its own so that a loss (``flyp.contrastive``) does not depend on the loop."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Task:
    """What a method plugs into ``flyp.training.fit``: the module to optimise, its training data
    and loss, and how to validate and snapshot it. Subclasses override ``loss`` and ``validate``.

    In a run over several ranks ``loss`` gets this rank's slice of the global batch, and returns
    its share of the global loss such that the mean over ranks is the loss of the global batch
    (the mean over the slice for a per-example loss; a contrastive loss gathers the other ranks'
    features). Random draws made for the batch are drawn for the global batch and sliced
    (``flyp.distributed.local_rows``), so that every rank draws as one process would."""

    module: nn.Module
    train_data: torch.utils.data.Dataset

    def loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def validate(self) -> dict | None:
        """ID-val results of the current weights ({"val_metric": name, "val_score": the
        benchmark's ID metric, "val_loss": cross-entropy}; see
        ``flyp.scoring.validation_scores``), or None when the task does no selection."""
        return None

    def save(self, path: Path, info: dict) -> None:
        """Write the current weights as a checkpoint (the one kept if this epoch is the best)."""
        raise NotImplementedError
