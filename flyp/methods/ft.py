"""FT: standard full finetuning (WiSE-FT's recipe). The image encoder and a linear head initialised
from the zero-shot head are trained with cross-entropy; the text encoder is not used (its weights
are carried unchanged so every checkpoint has the same layout)."""

from pathlib import Path

import torch.nn.functional as F

from flyp.loading import to_device
from flyp.methods import Context, Method, register_method
from flyp.models import ImageClassifier, save_checkpoint
from flyp.task import Task


class CrossEntropyTask(Task):
    def __init__(self, ctx: Context, classifier: ImageClassifier):
        self.ctx = ctx
        self.module = classifier
        self.train_data = ctx.train_table()

    def loss(self, batch):
        images, labels = batch
        device = self.ctx.device
        return F.cross_entropy(self.module(to_device(images, device)), to_device(labels, device))

    def validate(self) -> dict:
        return self.ctx.validate(self.module)

    def save(self, path: Path, info: dict) -> None:
        save_checkpoint(path, self.ctx.model_name, self.module.clip, self.module.head, info)


def freeze_text_tower(clip) -> None:
    """Only the image tower (``visual``) keeps gradients."""
    for name, p in clip.named_parameters():
        p.requires_grad_(name.startswith("visual."))


@register_method("ft")
class FullFinetune(Method):
    description = "image encoder + zero-shot-initialised linear head, cross-entropy"

    def task(self, ctx: Context) -> CrossEntropyTask:
        clip = ctx.fresh_clip()
        head = ctx.zero_shot_head(clip)
        freeze_text_tower(clip)
        return CrossEntropyTask(ctx, ImageClassifier(clip, head))
