"""Every training setting, declared once: its name, type, range, default and meaning.

The one source the rest derives from: `flyp pretrain` and `flyp finetune` build their options from
it (flyp/cli.py), the workflow's rules their arguments and the keys a method's ``method_options``
or a sweep's grid may set (flyp/workflow/config.py, flyp/sweep.py), and ``flyp.training.
TrainConfig`` holds one field per setting. The params schema states each setting's values once
(workflow/schemas/params.schema.yaml, ``$defs``), and tests/test_settings.py checks that it says
what this module says. Light (no torch): the workflow reads it while it parses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    """One training setting. ``default`` None: no default (a run that trains must be given it).
    ``top_level``: params.yaml may set it at its top level, for every method of every preset."""

    name: str
    type: type  # int, float, str or bool
    help: str
    default: object = None
    minimum: float | None = None
    exclusive_minimum: bool = False  # minimum itself excluded
    choices: tuple[str, ...] = ()
    top_level: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def sweepable(self) -> bool:
        """Whether a sweep's grid may vary it (numbers only)."""
        return self.type in (int, float)

    def schema(self) -> dict:
        """The JSON schema of a value (workflow/schemas/params.schema.yaml, ``$defs``)."""
        if self.choices:
            return {"enum": list(self.choices)}
        kind = {int: "integer", float: "number", bool: "boolean", str: "string"}[self.type]
        out = {"type": kind}
        if self.minimum is not None:
            out["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        return out


_EPOCHS = Setting("epochs", int, "Passes over the training set.", minimum=0, top_level=True)
_LR = Setting(
    "lr",
    float,
    "Peak learning rate (after the linear warmup, before the cosine decay).",
    minimum=0,
    exclusive_minimum=True,
    top_level=True,
)
_WD = Setting("wd", float, "AdamW weight decay.", minimum=0, top_level=True)
_BATCH = Setting(
    "batch_size",
    int,
    "Examples per step, over all processes of the run (the contrastive batch).",
    minimum=1,
    top_level=True,
)
_WARMUP = Setting(
    "warmup_steps",
    int,
    "Steps of linear warmup from 0 to lr.",
    default=0,
    minimum=0,
    top_level=True,
)
_CLIP = Setting("grad_clip", float, "Max gradient norm (0: no clipping).", default=0.0, minimum=0)
SEED = Setting("seed", int, "Seeds the run's random draws.", default=0)
_PRECISION = Setting(
    "precision",
    str,
    "Training arithmetic: fp32, or bf16 autocast.",
    default="fp32",
    choices=("fp32", "bf16"),
)
_DECAY = Setting(
    "decay",
    str,
    "Weight decay on every parameter (the FLYP reference) or on weight matrices only (not "
    "biases, norms, logit_scale).",
    default="all",
    choices=("all", "matrices"),
)
_CLAMP = Setting(
    "clamp_logit_scale",
    bool,
    "Clamp CLIP's logit_scale to ln 100 after each step (open_clip's trainer; the FLYP "
    "reference does not).",
    default=False,
)
# Every setting of a run, in the order of its command's options (flyp pretrain, flyp finetune).
ARGUMENTS = (_EPOCHS, _LR, _WD, _BATCH, _WARMUP, _CLIP, SEED, _PRECISION, _DECAY, _CLAMP)
# The training settings: what a preset's finetune block, a method's method_options, a few-shot
# protocol, a sweep (the numeric ones) and, for some, the top level of params.yaml may set. The
# seed is the run's own (the top-level `seeds`, a few-shot draw's index).
TRAINING = tuple(s for s in ARGUMENTS if s is not SEED)
BY_NAME = {s.name: s for s in ARGUMENTS}
# What a run that trains must be given (no default).
REQUIRED = tuple(s.name for s in TRAINING if s.default is None)
TOP_LEVEL = tuple(s.name for s in TRAINING if s.top_level)
SWEEPABLE = tuple(s.name for s in TRAINING if s.sweepable)

# The few-shot protocol's switches (params.yaml ``presets.<name>.fewshot``), each value's meaning
# where it is used; the first of each is the default. TIES: which of two epochs with the same
# lowest val loss a draw keeps (`flyp fewshot --val-loss-tie`; "later": the FLYP reference's
# `if cnt_loss <= min_cnt_loss`). AUGMENTATIONS: a training image's random crop and caption drawn
# afresh every epoch, or once for the whole run (`--augmentation`; "once": the FLYP reference's
# few-shot loop, which transforms its k-per-class batch once). STD_DDOFS: the delta degrees of
# freedom of the table's std over draws (`flyp report --fewshot-std-ddof`; 0: the reference's
# `np.std`).
TIES = ("earlier", "later")
AUGMENTATIONS = ("per_epoch", "once")
STD_DDOFS = (1, 0)
