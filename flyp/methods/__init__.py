"""Registry of finetuning methods. Each method is a file that registers itself by name.

A method turns the pretrained CLIP into an image classifier. Methods that train return a
``flyp.training.Task`` that the shared loop in ``flyp.training.fit`` optimises; every method ends in
the same checkpoint format (CLIP weights + linear head), so evaluation and weight ensembling never
need to know which method made a checkpoint.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from flyp.datasets import Benchmark, table_path
from flyp.datasets.tables import ImageTable
from flyp.evaluation import CachedEvalSet, accuracy, predict
from flyp.io import UserError
from flyp.models import Checkpoint, ImageClassifier, build_zero_shot_head, clip_from_checkpoint


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
    _val: CachedEvalSet | None = None

    @property
    def model_name(self) -> str:
        return self.pretrained.model_name

    def fresh_clip(self) -> nn.Module:
        """A new copy of the pretrained CLIP on the context's device."""
        return clip_from_checkpoint(self.pretrained).to(self.device)

    def train_table(self) -> ImageTable:
        return ImageTable(table_path(self.data_dir, "train"), self.train_transform)

    def val_set(self) -> CachedEvalSet:
        if self._val is None:
            self._val = CachedEvalSet(ImageTable(table_path(self.data_dir, "val"),
                                                 self.eval_transform))
        return self._val

    def zero_shot_head(self, clip: nn.Module) -> nn.Linear:
        return build_zero_shot_head(clip, self.tokenizer, self.benchmark.classnames,
                                    self.benchmark.templates)

    def val_accuracy(self, classifier: nn.Module) -> float:
        return accuracy(*predict(classifier, self.val_set(), device=self.device))

    def option(self, key: str, default=None, type_=float):
        value = self.options.get(key, default)
        if value is None:
            raise UserError(f"method option {key!r} is required")
        try:
            return type_(value)
        except (TypeError, ValueError):
            raise UserError(f"method option {key!r}: expected {type_.__name__}, "
                            f"got {value!r}") from None


class Method:
    name: str = ""
    trains: bool = True
    description: str = ""

    def task(self, ctx: Context):
        """The training task (``flyp.training.Task``); only for methods that train."""
        raise NotImplementedError

    def classifier(self, ctx: Context) -> ImageClassifier:
        """The classifier of a method that does not train."""
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}
_MODULES = ["flyp.methods.zeroshot", "flyp.methods.ft", "flyp.methods.flyp"]


def register_method(name: str):
    def wrap(cls: type[Method]):
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(module)


def method_names() -> list[str]:
    _load_all()
    return sorted(METHODS)


def get_method(name: str) -> Method:
    _load_all()
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]()
