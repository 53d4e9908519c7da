"""The paper's three ablations (FLYP section 5): each changes one thing about FLYP, and the paper
finds each worse ("using finetuning = pretraining is key").

- ``ce_both_towers``: cross-entropy with both encoders trained; the head is the text embedding of
  the class prompts, one random template per class per step.
- ``flyp_image_only``: FLYP's contrastive loss, but only the image encoder is trained.
- ``flyp_no_collisions``: FLYP's contrastive loss with class collisions removed: other images of
  the same class are dropped from each softmax denominator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flyp import distributed
from flyp.loading import to_device
from flyp.methods import Context, Method, register_method
from flyp.methods.flyp import FlypTask


class CrossEntropyBothTowersTask(FlypTask):
    """Logits against every class's prompt (one template drawn per class per step), CE loss."""

    def loss(self, batch):
        images, labels = batch
        n_classes, n_templates = self.caption_tokens.shape[:2]
        template = torch.randint(n_templates, (n_classes,))
        prompts = self.caption_tokens[torch.arange(n_classes), template]  # (C, L)
        images = to_device(images, self.device)  # (B, 3, H, W) uint8
        img = F.normalize(self.module.encode_image(images), dim=-1)  # (B, D)
        prompts = to_device(prompts, self.device)
        txt = F.normalize(self.module.encode_text(prompts), dim=-1)  # (C, D)
        logits = self.module.logit_scale.exp() * img @ txt.T  # (B, C)
        return F.cross_entropy(logits, to_device(labels, self.device))


class ImageOnlyTask(FlypTask):
    """FLYP with the text tower and temperature frozen."""

    def __init__(self, ctx: Context, clip):
        super().__init__(ctx, clip)
        for name, p in clip.named_parameters():
            p.requires_grad_(name.startswith("visual."))


def contrastive_loss_without_collisions(image_features, text_features, logit_scale, labels):
    """CLIP's symmetric loss where, for each anchor, the other pairs of its class are removed from
    the softmax denominator (their logits set to -inf). Features (B, D) normalised, labels (B,).
    Equals the plain loss when every label in the batch differs."""
    logits = logit_scale * image_features @ text_features.T  # (B, B)
    same = labels[:, None] == labels[None, :]
    collision = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(collision, float("-inf"))
    target = torch.arange(len(labels), device=labels.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def gathered_loss_without_collisions(clip_loss, image_features, text_features, logit_scale, labels):
    """The same over several ranks: this rank's b pairs against the N of the global batch, the
    features gathered with their gradients (open_clip's local loss, ``ClipLoss.get_logits``) and
    every rank's labels gathered for the mask. The mean over ranks is the global batch's loss."""
    logits_per_image, logits_per_text = clip_loss.get_logits(
        image_features, text_features, logit_scale
    )  # (b, N) each
    target = clip_loss.get_ground_truth(labels.device, len(labels))  # (b,): each one's own pair
    collision = labels[:, None] == distributed.gather_rows(labels)[None, :]  # (b, N)
    collision[torch.arange(len(labels), device=labels.device), target] = False
    return (
        F.cross_entropy(logits_per_image.masked_fill(collision, float("-inf")), target)
        + F.cross_entropy(logits_per_text.masked_fill(collision, float("-inf")), target)
    ) / 2


class NoCollisionsTask(FlypTask):
    def objective(self, image_features, text_features, logit_scale, batch):
        labels = to_device(batch[1], self.device)
        if distributed.world_size() > 1:
            return gathered_loss_without_collisions(
                self.clip_loss, image_features, text_features, logit_scale, labels
            )
        return contrastive_loss_without_collisions(
            image_features, text_features, logit_scale, labels
        )


@register_method("ce_both_towers")
class CrossEntropyBothTowers(Method):
    head_from_text = True
    description = "ablation: cross-entropy, both encoders trained, class-prompt head"

    def task(self, ctx: Context):
        return CrossEntropyBothTowersTask(ctx, ctx.fresh_clip())


@register_method("flyp_image_only")
class FlypImageOnly(Method):
    head_from_text = True
    description = "ablation: contrastive loss, only the image encoder trained"

    def task(self, ctx: Context):
        return ImageOnlyTask(ctx, ctx.fresh_clip())


@register_method("flyp_no_collisions")
class FlypNoCollisions(Method):
    head_from_text = True
    description = "ablation: contrastive loss without same-class pairs in the denominators"

    def task(self, ctx: Context):
        return NoCollisionsTask(ctx, ctx.fresh_clip())
