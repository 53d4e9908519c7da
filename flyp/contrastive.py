"""The CLIP contrastive objective, shared by pretraining and FLYP ("finetune like you pretrain").

Loss (Radford et al. 2021; FLYP section 3): on L2-normalised features I (B, D) and T (B, D),
``(CE(s * I @ T.T, arange(B)) + CE(s * T @ I.T, arange(B))) / 2`` with the learnable temperature
``s = logit_scale.exp()`` (open_clip's ``ClipLoss``). Over several ranks each rank's B/W pairs are
scored against the features of every rank, gathered with their gradients, as open_clip's trainer
does (``local_loss``, ``gather_with_grad``): the negatives are the global batch.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from torch import nn

from flyp import distributed
from flyp.loading import to_device
from flyp.models import save_checkpoint
from flyp.task import Task


class ContrastiveTask(Task):
    """Train a whole CLIP with the contrastive loss on (image, caption tokens) batches.

    Subclasses provide ``train_data`` and ``captions(batch) -> (images, tokens)``.
    """

    def __init__(self, clip: nn.Module, model_name: str, device: torch.device):
        self.module = clip
        self.model_name = model_name
        self.device = device
        world = distributed.world_size()
        self.clip_loss = open_clip.ClipLoss(
            local_loss=world > 1,
            gather_with_grad=world > 1,
            rank=distributed.rank(),
            world_size=world,
        )

    def captions(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, batch) -> torch.Tensor:
        images, tokens = self.captions(batch)
        image_features, text_features, logit_scale = self.module(
            to_device(images, self.device), to_device(tokens, self.device)
        )[:3]
        return self.objective(image_features, text_features, logit_scale, batch)

    def objective(self, image_features, text_features, logit_scale, batch) -> torch.Tensor:
        """The loss on normalised features (B, D); CLIP's symmetric contrastive loss."""
        return self.clip_loss(image_features, text_features, logit_scale)

    def head(self) -> nn.Linear | None:
        return None

    def save(self, path: Path, info: dict) -> None:
        save_checkpoint(path, self.model_name, self.module, self.head(), info)


class CaptionedImages(torch.utils.data.Dataset):
    """(image, token ids) pairs: an image table plus one tokenised caption per row."""

    def __init__(self, images, tokens: torch.Tensor):
        assert len(images) == len(tokens)
        self.images, self.tokens = images, tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i):
        return self.images[i][0], self.tokens[i]
