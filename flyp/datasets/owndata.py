"""Your own images as a benchmark, with no code: a folder of class folders, or a CSV of paths.

``imagefolder``: ``ROOT/train/<class>/*`` (required), ``ROOT/val/<class>/*`` (optional: else a
seeded per-class sample of train, ``val_size`` images or ``val_fraction`` of them),
``ROOT/test/<class>/*`` (required, the ID test set) and any number of OOD sets
``ROOT/ood/<name>/<class>/*``, each an OOD column of the table.

``csv``: one table with the columns ``path``, ``label``, ``split`` (``train``, ``val``, ``test`` or
an OOD set's name) and optionally ``group`` (for the ``worst_group`` metric); paths are relative to
the CSV's folder.

A source is named by a spec, ``{"dataset": ..., "name": ..., "root" | "csv": ..., "classnames",
"templates", "metric"}``, which ``flyp.datasets.get_benchmark`` takes as JSON in place of a
registered name: the workflow passes it to every step (``--benchmark``), each step rebuilds the
benchmark from it. What the benchmark is (its classes, OOD sets, names and templates) is read
from folder names, or the CSV, without opening an image, so that building the DAG stays light;
``prepare`` lists every image, checks it and writes tables of paths (no image bytes copied).

Classes are the train split's class folders (labels), in sorted order (numerically when every
label is an integer); a class's name in the prompts is its folder name or label with underscores
as spaces, or the name an optional ``classnames`` file gives it (CSV ``label,name`` or a JSON
object). Templates: OpenAI's 80 ImageNet templates, or a ``templates`` file (one per line, each
with one ``{}``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from flyp.datasets import Benchmark, EvalSet, register_spec_reader
from flyp.io import UserError

DATASETS = ("imagefolder", "csv")
# The metric a spec names -> the one flyp.scoring registers (table and model selection).
METRICS = {"accuracy": "accuracy", "macro_f1": "macro_f1", "worst_group": "worst_group_accuracy"}
# Files with these suffixes are images; any other file is skipped (and counted).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CSV_COLUMNS = ("path", "label", "split")
# An OOD set's name becomes a table file and a column of results/table.csv.
SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED = {"train", "val", "test", "pretrain", "id", "avg_ood", "method"}
# Split words that are probably a typo of train/val/test rather than an OOD set.
NOT_OOD = {"training", "validation", "valid", "dev", "eval", "testing", "holdout"}


@dataclass(frozen=True)
class OwnData:
    """Where a user's images are and how to read them (a benchmark spec)."""

    dataset: str
    name: str
    path: str  # imagefolder: ROOT; csv: the CSV file
    classnames: str | None = None
    templates: str | None = None
    metric: str = "accuracy"

    @property
    def base(self) -> Path:
        """The folder image paths are relative to."""
        return Path(self.path) if self.dataset == "imagefolder" else Path(self.path).parent

    def spec(self) -> str:
        """The spec as compact JSON with sorted keys (one text for one source)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out[{"imagefolder": "root", "csv": "csv"}[self.dataset]] = out.pop("path")
        return json.dumps(out, sort_keys=True, separators=(",", ":"))

    def listing(self) -> list[tuple[str, str, str, str | None]]:
        """(split, label, path relative to ``base``, group) of every file of the source, sorted."""
        return folder_listing(Path(self.path)) if self.dataset == "imagefolder" else self._rows()

    def _rows(self):
        return [(r["split"], r["label"], r["path"], r.get("group")) for r in read_csv(self.path)]

    def splits(self) -> dict[str, list[str]]:
        """Split -> its labels (sorted, distinct), read from folder names or the CSV."""
        if self.dataset == "imagefolder":
            return folder_splits(Path(self.path))
        found: dict[str, set[str]] = {}
        for split, label, path, _ in self._rows():
            if Path(path).suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(split, set()).add(label)
        return {split: sorted(labels) for split, labels in found.items()}

    @staticmethod
    def is_image(path: str) -> bool:
        return Path(path).suffix.lower() in IMAGE_SUFFIXES

    def class_keys(self, splits: dict[str, list[str]] | None = None) -> list[str]:
        """The train split's labels in class order (label i is the i-th)."""
        return label_order((splits or self.splits())["train"])

    def benchmark(self) -> Benchmark:
        splits = self.splits()
        check_splits(splits, self.path)
        keys = self.class_keys(splits)
        names = read_classnames(self.classnames, keys) if self.classnames else None
        if self.metric == "worst_group" and not self.has_groups():
            raise UserError(f"{self.path}: metric worst_group needs a 'group' column (a CSV)")
        metric = METRICS[self.metric]
        ood = sorted(s for s in splits if s not in ("train", "val", "test"))
        return Benchmark(
            name=self.name,
            classnames=names or [k.replace("_", " ") for k in keys],
            templates=read_templates(self.templates) if self.templates else default_templates(),
            eval_sets=[
                EvalSet("test", ood=False, metric=metric, description="ID test split"),
                *(EvalSet(s, ood=True, metric=metric, description=f"OOD set {s}") for s in ood),
            ],
            prepare=self.prepare,
            description=f"{self.name}: {self.dataset} {self.path}",
        )

    def has_groups(self) -> bool:
        if self.dataset != "csv":
            return False
        with open(self.path, newline="") as f:
            return "group" in (next(csv.reader(f), None) or [])

    def fingerprint(self) -> str:
        """A hash of every file's path, size and modification time (and of the CSV itself), as
        flyp.datasets.manifest.data_hash hashes path tables: an image added, removed, replaced or
        touched changes it, and so reruns the prepare step and everything after it."""
        h = hashlib.sha256()
        if self.dataset == "csv":
            h.update(Path(self.path).read_bytes())
        entries = stat_all(self.base, [row[2] for row in self.listing()])
        h.update("\n".join(f"{path}\t{size}\t{mtime}" for path, size, mtime in entries).encode())
        return h.hexdigest()[:16]

    def prepare(
        self,
        out_dir: Path,
        *,
        seed: int = 0,
        val_size: int = 0,
        val_fraction: float = 0.1,
        workers: int = 1,
    ) -> None:
        """Check every image and write train/val/test and one table per OOD set into ``out_dir``:
        ``image_id`` (the path in the source), ``label``, ``path`` (relative to ``out_dir``) and
        ``group`` when the source has groups. Without a val split, val is a seeded per-class
        sample of train: ``val_size`` images when above 0, else ``val_fraction`` of them."""
        from flyp.datasets.owndata_prepare import prepare_tables

        prepare_tables(self, Path(out_dir), seed, val_size, val_fraction, workers)


def from_spec(text: str) -> OwnData:
    """The source a JSON spec names; a one-line UserError for a spec that names none."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"benchmark spec {text!r}: not JSON ({e.msg})") from None
    if not isinstance(spec, dict) or spec.get("dataset") not in DATASETS:
        raise UserError(f"benchmark spec {text!r}: expected a 'dataset' of {list(DATASETS)}")
    key = {"imagefolder": "root", "csv": "csv"}[spec["dataset"]]
    known = {"dataset", "name", key, "classnames", "templates", "metric"}
    if set(spec) - known or key not in spec:
        raise UserError(f"benchmark spec {text!r}: expected the keys {sorted(known)}")
    if spec.get("metric", "accuracy") not in METRICS:
        raise UserError(
            f"benchmark spec: metric {spec['metric']!r}; expected one of {list(METRICS)}"
        )
    source = OwnData(
        spec["dataset"],
        spec.get("name", spec["dataset"]),
        spec[key],
        spec.get("classnames"),
        spec.get("templates"),
        spec.get("metric", "accuracy"),
    )
    if not (Path(source.path).is_dir() if key == "root" else Path(source.path).is_file()):
        kind = "folder" if key == "root" else "file"
        raise UserError(f"{source.path}: {kind} not found ({source.dataset} {key})")
    return source


# ----------------------------------------------------------------------------------------------
# Reading the source: folders, the CSV, the classnames and templates files.


def _subdirs(folder: Path) -> list[Path]:
    return sorted(e for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))


def split_folders(root: Path) -> dict[str, Path]:
    """Split name -> its folder of class folders: train, val (if any), test, ood/<name>."""
    for required in ("train", "test"):
        if not (root / required).is_dir():
            raise UserError(f"{root / required}: not found; expected {root}/{required}/<class>/")
    out = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if (root / "ood").is_dir():
        for folder in _subdirs(root / "ood"):
            check_set_name(folder.name, folder)
            out[folder.name] = folder
    known = {"train", "val", "test", "ood"}
    for folder in _subdirs(root):
        if folder.name not in known:
            raise UserError(f"{folder}: unknown folder; expected train, val, test or ood")
    return out


def folder_splits(root: Path) -> dict[str, list[str]]:
    return {split: [d.name for d in _subdirs(f)] for split, f in split_folders(root).items()}


def folder_listing(root: Path) -> list[tuple[str, str, str, None]]:
    """Every file under each split's class folders (hidden ones left out), sorted by path."""
    rows = []
    for split, folder in split_folders(root).items():
        for cls in _subdirs(folder):
            for dirpath, dirnames, filenames in os.walk(cls):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
                for name in sorted(filenames):
                    if not name.startswith("."):
                        rows.append((split, cls.name, f"{rel}/{name}", None))
    return rows


def read_csv(path: str | Path) -> list[dict]:
    """The CSV's rows (path, label, split and group when present), values stripped."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(
                    f"{path}: missing column(s) {missing}; expected path, label, split "
                    f"(and optionally group), found {reader.fieldnames}"
                )
            keep = [*CSV_COLUMNS, *(["group"] if "group" in reader.fieldnames else [])]
            rows = [{k: (row[k] or "").strip() for k in keep} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        check_csv_row(row, path, i)
    return rows


def check_csv_row(row: dict, path: Path, line: int) -> None:
    where = f"{path}: line {line}"
    if not row["path"] or not row["label"]:
        raise UserError(f"{where}: empty path or label")
    split = row["split"]
    if split not in ("train", "val", "test") and (
        split.lower() in NOT_OOD or not SET_NAME.match(split) or split in RESERVED
    ):
        raise UserError(
            f"{where}: unknown split {split!r}; expected train, val, test or an OOD set's name "
            f"(letters, digits, _ . -)"
        )
    if "group" in row and not row["group"]:
        raise UserError(f"{where}: empty group")


def check_set_name(name: str, where) -> None:
    if not SET_NAME.match(name) or name in RESERVED:
        raise UserError(
            f"{where}: OOD set name {name!r}: expected letters, digits, _ . - and none of "
            f"{sorted(RESERVED)}"
        )


def check_splits(splits: dict[str, list[str]], where: str) -> None:
    """train and test have images; no split has a class that train lacks."""
    for required in ("train", "test"):
        if not splits.get(required):
            raise UserError(f"{where}: no {required} images (classes) found")
    train = set(splits["train"])
    for split, labels in splits.items():
        extra = sorted(set(labels) - train)
        if extra:
            raise UserError(f"{where}: split {split!r} has class(es) {extra[:5]} that train lacks")


def label_order(labels) -> list[str]:
    """Class order: numeric when every label is an integer, else by text."""
    labels = sorted(set(labels))
    if all(re.fullmatch(r"[+-]?\d+", k) for k in labels):
        return sorted(labels, key=int)
    return labels


def read_classnames(path: str, keys: list[str]) -> list[str]:
    """Each class's name from a CSV (label,name) or JSON object; every label must have one, and
    every name a label with images."""
    file = Path(path)
    try:
        if file.suffix.lower() == ".json":
            names = json.loads(file.read_text())
            if not isinstance(names, dict):
                raise UserError(f"{file}: expected a JSON object mapping label to name")
            names = {str(k): str(v) for k, v in names.items()}
        else:
            with open(file, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or not {"label", "name"} <= set(reader.fieldnames):
                    raise UserError(f"{file}: expected the columns label,name")
                names = {r["label"].strip(): r["name"].strip() for r in reader}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise UserError(f"{file}: not a readable classnames file ({e})") from None
    unknown = sorted(set(names) - set(keys))
    if unknown:
        raise UserError(f"{file}: label(s) {unknown[:5]} have no images in train")
    unnamed = [k for k in keys if not names.get(k)]
    if unnamed:
        raise UserError(f"{file}: no name for label(s) {unnamed[:5]}")
    return [names[k] for k in keys]


def read_templates(path: str) -> list[str]:
    """One template per non-empty line, each with exactly one ``{}``."""
    file = Path(path)
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: not a readable templates file ({e})") from None
    templates = []
    for i, line in enumerate(lines, start=1):
        if line.strip():
            if line.count("{}") != 1 or line.replace("{}", "").count("{"):
                raise UserError(f"{file}: line {i}: expected one '{{}}' for the class name")
            templates.append(line.strip())
    if not templates:
        raise UserError(f"{file}: no templates")
    return templates


def default_templates() -> list[str]:
    """OpenAI's 80 ImageNet templates (those of the imagenet benchmark)."""
    from flyp.datasets.imagenet import templates

    return templates()


def stat_all(base: Path, paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of each file, relative to ``base``, sorted by path."""
    out, folder = [], str(base)
    for rel in sorted(paths):
        try:
            st = os.stat(os.path.join(folder, rel))  # (strings: a Path per file costs 3x)
        except OSError as e:
            raise UserError(f"{base / rel}: not readable ({e.strerror})") from None
        out.append((rel, st.st_size, st.st_mtime_ns))
    return out


@register_spec_reader("imagefolder")
@register_spec_reader("csv")
def read_spec(text: str) -> Benchmark:
    """The benchmark of the source a JSON spec names (flyp.datasets.get_benchmark)."""
    return from_spec(text).benchmark()
