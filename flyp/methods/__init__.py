"""Registry of finetuning methods. Each method is a file that registers itself by name.

A method turns the pretrained CLIP into an image classifier. Methods that train return a
``flyp.task.Task`` that the shared loop in ``flyp.training.fit`` optimises; every method ends in
the same checkpoint format (CLIP weights + linear head), so evaluation and weight ensembling never
need to know which method made a checkpoint.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flyp.datasets import Benchmark, table_path
from flyp.datasets.tables import ImageTable
from flyp.evalcache import CachedImages, EvalCache
from flyp.io import UserError
from flyp.models import Checkpoint, ImageClassifier, build_zero_shot_head, clip_from_checkpoint
from flyp.options import Option, describe_options, option_specs  # noqa: F401 (methods import)
from flyp.scoring import CachedEvalSet, maybe_cached, predict, validation_scores


@dataclass
class Context:
    """Everything a method may use, built once by the CLI."""

    benchmark: Benchmark
    pretrained: Checkpoint
    data_dir: Path  # the prepared tables
    captions_dir: Path  # captions.parquet and templates.parquet
    device: torch.device
    tokenizer: object
    train_transform: object
    eval_transform: object
    seed: int
    options: dict = field(default_factory=dict)  # method-specific settings
    shots: int | None = None  # few-shot protocol: k training and k validation images per class
    draw: int = 0  # which few-shot draw (seeds the sample)
    notes: dict = field(default_factory=dict)  # facts a method records in its checkpoint
    workers: int = 0  # DataLoader worker processes (ID-val; training's are TrainConfig's)
    eval_cache: EvalCache | None = None  # ID-val's transformed images, if made (flyp.evalcache)
    # The train table of a resized copy (flyp.datasets.resized), read instead of data_dir's
    train_dir: Path | None = None
    _val: CachedEvalSet | CachedImages | None = None

    @property
    def model_name(self) -> str:
        return self.pretrained.model_name

    def fresh_clip(self) -> nn.Module:
        """A new copy of the pretrained CLIP on the context's device."""
        return clip_from_checkpoint(self.pretrained).to(self.device)

    def subset(self, labels, split: str = "train") -> np.ndarray | None:
        """Row indices of the few-shot sample of ``split`` (k per class), or None for all rows.
        The sample depends only on (draw, split, labels): every method sees the same images."""
        if self.shots is None:
            return None
        labels = np.asarray(labels)
        rng = np.random.default_rng([self.draw, {"train": 0, "val": 1}[split]])
        picked = []
        for c in range(len(self.benchmark.classnames)):  # a class without images too
            rows = np.flatnonzero(labels == c)
            if len(rows) < self.shots:
                name = self.benchmark.name
                raise UserError(
                    f"presets.{name}.fewshot.shots: k={self.shots}, but class {c} "
                    f"({self.benchmark.classnames[c]!r}) has only {len(rows)} "
                    f"{split} images in {name}; use a smaller k"
                )
            picked.append(rng.choice(rows, self.shots, replace=False))
        return np.sort(np.concatenate(picked))

    def _table(self, split: str, transform) -> ImageTable:
        folder = self.train_dir if split == "train" and self.train_dir else self.data_dir
        table = ImageTable(table_path(folder, split), transform)
        rows = self.subset(table.labels.numpy(), split)
        if rows is None:
            return table
        return ImageTable(table.path, transform, df=table.df.iloc[rows].reset_index(drop=True))

    def train_table(self) -> ImageTable:
        return self._table("train", self.train_transform)

    def val_set(self) -> CachedEvalSet | CachedImages:
        """ID-val (its few-shot sample in a few-shot run), transformed once: read from the eval
        cache when there is one, else kept in memory when it fits (``maybe_cached``)."""
        if self._val is None and self.eval_cache is not None:
            val = self.eval_cache.dataset("val")
            rows = self.subset(val.labels.numpy(), "val")
            self._val = val if rows is None else val.subset(rows)
        if self._val is None:
            self._val = maybe_cached(self._table("val", self.eval_transform))
        return self._val

    def subset_features(self, xy, split: str = "train"):
        """The few-shot sample of cached (features, labels)."""
        rows = self.subset(xy[1].numpy(), split)
        return xy if rows is None else (xy[0][rows], xy[1][rows])

    def zero_shot_head(self, clip: nn.Module) -> nn.Linear:
        return build_zero_shot_head(
            clip, self.tokenizer, self.benchmark.classnames, self.benchmark.templates
        )

    def validate(self, classifier: nn.Module) -> dict:
        """ID-val score (the benchmark's ID metric) and cross-entropy of ``classifier``; what
        model selection reads (``flyp.scoring.validation_scores``)."""
        val = self.val_set()
        logits, labels = predict(classifier, val, device=self.device, num_workers=self.workers)
        return validation_scores(logits, labels, self.benchmark.id_set, getattr(val, "df", None))


class Method:
    name: str = ""
    trains: bool = True
    description: str = ""
    # Files the method reads, by option name: "features" (the pretrained model's cached image
    # features) or "method:<name>" (that method's checkpoint of the same run). The workflow makes
    # them inputs and passes each path as `-o <option>=<path>`.
    inputs: dict[str, str] = {}
    # Whether a full run depends on its seed. One that does not (no training, no random draw:
    # zero-shot, the linear probe) is run once, for the first seed, and every seed's row reuses it.
    seeded: bool = True
    # Whether the classifier's head is the zero-shot head of the model's own text tower (so weight
    # ensembling rebuilds it from the interpolated text tower instead of mixing heads).
    head_from_text: bool = False
    # The method's own settings (besides the training keys every method shares, and ``inputs``,
    # which are path options the workflow fills in).
    options: tuple[Option, ...] = ()

    @classmethod
    def option_specs(cls, *, with_inputs: bool = True) -> dict[str, Option]:
        """Every option the method reads (``flyp.options.option_specs``)."""
        return option_specs(cls.inputs, cls.options, with_inputs=with_inputs)

    @classmethod
    def check_options(cls, options: dict, where: str = "") -> None:
        """Refuse an unknown or ill-typed option with one line listing the valid ones."""
        where = where or f"method {cls.name}"
        specs = cls.option_specs()
        for key, value in options.items():
            if key not in specs:
                raise UserError(
                    f"{where}: unknown option {key!r}; valid options: "
                    f"{describe_options(specs.values())}"
                )
            try:
                specs[key].parse(value)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None

    def option(self, ctx: Context, name: str):
        """The value of option ``name`` for this run: the context's, else the declared default."""
        spec = self.option_specs()[name]
        value = ctx.options.get(name, spec.default)
        if value is None:
            raise UserError(f"method {self.name}: option {name!r} is required")
        return spec.parse(value)

    def task(self, ctx: Context):
        """The training task (``flyp.task.Task``); only for methods that train."""
        raise NotImplementedError

    def classifier(self, ctx: Context) -> ImageClassifier:
        """The classifier of a method that does not train."""
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register_method(name: str):
    def wrap(cls: type[Method]):
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    """Import every module of this package; each method module registers itself."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def method_names() -> list[str]:
    _load_all()
    return sorted(METHODS)


def get_method(name: str) -> Method:
    _load_all()
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]()
