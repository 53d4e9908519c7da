"""Registry of benchmarks.

A benchmark names its classes, its caption templates and its evaluation sets (the ID test set first,
then the OOD sets). Its ``prepare`` step writes Parquet tables into ``data/<benchmark>/``:
``train.parquet``, ``val.parquet`` and one ``<eval set>.parquet`` per evaluation set, each with the
columns ``image_id``, ``label`` and either ``image`` (encoded bytes) or ``path`` (a file relative to
the table's folder). Everything downstream (captions, finetuning, evaluation) only reads those
tables, so a new benchmark is a new module that registers itself here.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flyp.io import UserError


@dataclass(frozen=True)
class EvalSet:
    """One test set: its name (the table's column), whether it is in or out of distribution, its
    metric, and an optional map from the benchmark's logits to this set's classes."""

    name: str
    ood: bool
    metric: str = "accuracy"
    description: str = ""
    # project_logits(logits, table): logits over the benchmark's classes (B, C) -> logits over
    # this set's classes (B, C'); ``table`` is the set's table (it may name each label's classes).
    project_logits: Callable | None = None


@dataclass(frozen=True)
class Download:
    """One archive a benchmark needs, fetched into ``data/raw/<name>`` by the download rules.

    ``url`` None means it cannot be downloaded (licence, password): the user places it and sets
    the path in params; ``manual`` says where to get it. Size and checksums are verified when
    given (docs/reference.md, "Canonical archives")."""

    name: str
    url: str | None
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    manual: str = ""
    inner_tars: bool = False  # .tar members unpack into a folder each (ImageNet train)


@dataclass
class Benchmark:
    name: str
    classnames: list[str]
    templates: list[str]  # format strings with one "{}" for the class name
    eval_sets: list[EvalSet]
    prepare: Callable  # prepare(out_dir: Path, **options) -> None
    description: str = ""
    extra_tables: list[str] = field(default_factory=list)  # e.g. the pretraining set
    downloads: list[Download] = field(default_factory=list)  # archives prepare reads

    @property
    def id_set(self) -> EvalSet:
        return next(s for s in self.eval_sets if not s.ood)

    @property
    def ood_sets(self) -> list[EvalSet]:
        return [s for s in self.eval_sets if s.ood]

    def eval_set(self, name: str) -> EvalSet:
        for s in self.eval_sets:
            if s.name == name:
                return s
        raise UserError(
            f"benchmark {self.name!r} has no test set {name!r}; "
            f"expected one of {[s.name for s in self.eval_sets]}"
        )

    def tables(self) -> list[str]:
        """Names of the Parquet tables ``prepare`` writes (without the .parquet suffix)."""
        return ["train", "val", *[s.name for s in self.eval_sets], *self.extra_tables]


BENCHMARKS: dict[str, Callable[[], Benchmark]] = {}
# Kinds of data a JSON spec may name in place of a registered benchmark ({"dataset": kind, ...}):
# kind -> reader(spec text) -> Benchmark (flyp.datasets.owndata: imagefolder, csv).
SPEC_READERS: dict[str, Callable[[str], Benchmark]] = {}


def register_benchmark(name: str):
    def wrap(factory: Callable[[], Benchmark]):
        BENCHMARKS[name] = factory
        return factory

    return wrap


def register_spec_reader(kind: str):
    def wrap(reader: Callable[[str], Benchmark]):
        SPEC_READERS[kind] = reader
        return reader

    return wrap


def _read_spec(text: str) -> Benchmark:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"benchmark spec {text!r}: not JSON ({e.msg})") from None
    kind = spec.get("dataset") if isinstance(spec, dict) else None
    if kind not in SPEC_READERS:
        raise UserError(f"benchmark spec {text!r}: expected a 'dataset' of {sorted(SPEC_READERS)}")
    return SPEC_READERS[kind](text)


# Modules of this package that are tools, not benchmarks (``tables`` imports torch: the download
# and prepare jobs and the Snakefile must not pay for it).
_NOT_BENCHMARKS = {
    "download",
    "manifest",
    "owndata_prepare",
    "parquet",
    "rawdata",
    "resized",
    "tables",
}


def _load_all() -> None:
    """Import every benchmark module of this package: a benchmark module registers itself on
    import (done lazily, so that `flyp --help` stays fast)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_BENCHMARKS:
            importlib.import_module(f"{__name__}.{info.name}")


def benchmark_names() -> list[str]:
    _load_all()
    return sorted(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name``, or the user's own data a JSON spec names
    (``{"dataset": "imagefolder", ...}``: flyp.datasets.owndata)."""
    _load_all()
    if name.lstrip().startswith("{"):
        return _read_spec(name)
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]()


def table_path(data_dir: str | Path, table: str) -> Path:
    return Path(data_dir) / f"{table}.parquet"
