"""FLYP (Goyal et al., CVPR 2023): finetune like you pretrain.

Each labelled image becomes an (image, caption) pair, the caption a template drawn at random for
every step from the benchmark's template set and filled with the class name; the whole CLIP (both
towers and ``logit_scale``) is trained with the pretraining contrastive loss. The classifier is the
zero-shot head rebuilt from the finetuned text encoder.

The caption table (``captions.parquet``: image id, label, class name, template set) is read once;
templates are sampled on the fly instead of expanding one row per (image, template) as the reference
code does.
"""

from __future__ import annotations

import torch

from flyp import distributed
from flyp.contrastive import ContrastiveTask
from flyp.datasets import table_path
from flyp.datasets.tables import read_table
from flyp.io import UserError
from flyp.methods import Context, Method, register_method
from flyp.models import ImageClassifier, prompt_tokens


def load_caption_bank(ctx: Context, train_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of the training images ``train_ids`` (N,) in order and the tokenised captions of
    every (class, template) pair (C, T, L), from the caption tables written by ``flyp captions``."""
    captions = read_table(table_path(ctx.captions_dir, "captions"))
    templates = read_table(
        table_path(ctx.captions_dir, "templates"), columns=["template_set", "template"]
    )
    captions = captions.set_index("image_id")
    missing = set(train_ids) - set(captions.index)
    if missing:
        raise UserError(
            f"{table_path(ctx.captions_dir, 'captions')}: no caption row for "
            f"{len(missing)} training images; rerun the captions step"
        )
    captions = captions.loc[list(train_ids)]
    sets = captions["template_set"].unique()
    where = table_path(ctx.captions_dir, "captions")
    if list(sets) != [ctx.benchmark.name]:
        raise UserError(
            f"{where}: template sets {list(sets)}, expected only benchmark "
            f"{ctx.benchmark.name!r}'s; rerun the captions step for this benchmark"
        )
    texts = templates.loc[templates["template_set"] == sets[0], "template"].tolist()
    if not texts:
        raise UserError(
            f"{table_path(ctx.captions_dir, 'templates')}: no template of set "
            f"{sets[0]!r}; rerun the captions step"
        )
    # The table stores template texts; the benchmark's own template objects fill in the class name
    # their way (FMoW's article templates), so theirs render the captions.
    own = {str(t): t for t in ctx.benchmark.templates}
    texts = [own.get(t, t) for t in texts]
    classnames = captions.drop_duplicates("label").set_index("label")["classname"]
    names = [
        classnames.get(c, ctx.benchmark.classnames[c]) for c in range(len(ctx.benchmark.classnames))
    ]
    tokens = prompt_tokens(ctx.tokenizer, tuple(t.format(c) for c in names for t in texts))
    tokens = tokens.view(len(names), len(texts), -1)
    return torch.tensor(captions["label"].to_numpy()), tokens


class FlypTask(ContrastiveTask):
    def __init__(self, ctx: Context, clip):
        super().__init__(clip, ctx.model_name, ctx.device)
        self.ctx = ctx
        self.train_data = ctx.train_table()
        labels, self.caption_tokens = load_caption_bank(ctx, self.train_data.df["image_id"])
        if not torch.equal(labels, self.train_data.labels):
            raise UserError("captions table labels disagree with train.parquet; rerun captions")

    def captions(self, batch):
        images, labels = batch  # (B, 3, H, W), (B,)
        n_templates = self.caption_tokens.shape[1]
        # One template per image per step, drawn for the global batch as one process draws them
        # (in a run over several ranks, this rank's images are a slice of it).
        template = torch.randint(n_templates, (len(labels) * distributed.world_size(),))
        return images, self.caption_tokens[labels, distributed.local_rows(template)]  # (B, L)

    def head(self):
        return self.ctx.zero_shot_head(self.module)

    def validate(self) -> dict:
        return self.ctx.validate(ImageClassifier(self.module, self.head()))


@register_method("flyp")
class Flyp(Method):
    head_from_text = True
    description = "whole CLIP, contrastive loss on (image, templated class caption) pairs"

    def task(self, ctx: Context) -> FlypTask:
        return FlypTask(ctx, ctx.fresh_clip())
