"""ImageNet-1k and its five distribution shifts, the paper's main benchmark (FLYP section 4.1).

========== =====================================================================================
train      ImageNet-1k train, less the held-out ``val`` sample
val        a seeded sample of train (``val_size`` images), for model selection: the ImageNet val
           set is the test set, so it cannot also pick the epoch. With ``val_in_train`` the
           sample stays in train as well (the FLYP reference trains on all 1.28M images and
           keeps the last epoch: presets.imagenet.selection: last_epoch); ID-val then scores
           training images
test       ID: ImageNet-1k val (50,000), labels from the devkit
v2         ImageNetV2 matched-frequency (folders ``0..999`` are class indices)
r          ImageNet-R: 200 classes, scored on those 200 columns of the 1000-class head
a          ImageNet-A: 200 classes, likewise
sketch     ImageNet-Sketch (1000 classes)
objectnet  ObjectNet: the 113 classes that map to ImageNet (125 ImageNet classes); the logit of a
           class is the max over its ImageNet classes; a 2-pixel border is cropped first
========== =====================================================================================

Every label is an index into the sorted list of the 1000 ImageNet wnids (from the devkit), which
is the order of open_clip's ``IMAGENET_CLASSNAMES`` (and torchvision's ImageFolder). Class subsets
(R, A, ObjectNet) keep their own labels ``0..K-1`` plus the ImageNet label(s) of each row, from
which the projection of the logits is built: the class lists come from the folders on disk and the
mapping files shipped with ObjectNet, nothing is hard-coded. Images stay files under ``data/raw/``
(fetched and unpacked by the download rules); the tables index them with paths relative to the
table's folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from flyp.datasets import Benchmark, Download, EvalSet, register_benchmark
from flyp.datasets.parquet import write_table
from flyp.io import UserError
from flyp.progress import progress_bar

_IMAGENET_SITE = "https://image-net.org/download-images.php (free account)"
DOWNLOADS = [
    Download(
        "imagenet_train",
        None,
        size=147_897_477_120,
        md5="1d675b47d978889d74fa0da5fadfb00e",
        manual=f"ILSVRC2012_img_train.tar from {_IMAGENET_SITE}",
        inner_tars=True,
    ),
    Download(
        "imagenet_val",
        None,
        size=6_744_924_160,
        md5="29b22e2961454d5413ddabcf34fc5622",
        manual=f"ILSVRC2012_img_val.tar from {_IMAGENET_SITE}",
    ),
    Download(
        "imagenet_devkit",
        None,
        md5="fa75699e90414af021442c21a62c3abf",
        manual=f"ILSVRC2012_devkit_t12.tar.gz from {_IMAGENET_SITE}",
    ),
    Download(
        "imagenetv2",
        "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
        "imagenetv2-matched-frequency.tar.gz",
        size=1_264_079_360,
        sha256="f0c37fdf925916b19ea1323cd9a2208cdb6959ba2c32eef2a7fc393835c9ca7c",
    ),
    Download(
        "imagenet_r",
        "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
        size=2_191_079_936,
    ),
    Download(
        "imagenet_a", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar", size=687_552_512
    ),
    Download(
        "imagenet_sketch",
        "https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/"
        "main/data/ImageNet-Sketch.zip",
        size=7_593_573_012,
        sha256="4d3ce6b82a7c48aabf14aeac105eb533e75707f152cc858f55bfc022031a72ed",
    ),
    Download(
        "objectnet",
        None,
        manual="objectnet-1.0.zip from https://objectnet.dev/download.html;"
        " unzip it with the password given there",
    ),
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
WNID = re.compile(r"^n\d{8}$")
OBJECTNET_BORDER = 2  # pixels cropped from each side (ObjectNet images have a 1-px red frame)


def _zero_shot_metadata():
    """open_clip's ``zero_shot_metadata`` module (class names and templates), loaded from its file
    without importing the open_clip package, which imports torch: the download and prepare jobs and
    the Snakefile need the names, not the models, and start seconds faster without it."""
    package = importlib.util.find_spec("open_clip")
    if package is None or not package.submodule_search_locations:
        raise UserError("open_clip is not installed (pip install open_clip_torch)")
    path = Path(package.submodule_search_locations[0]) / "zero_shot_metadata.py"
    spec = importlib.util.spec_from_file_location("flyp_open_clip_zero_shot_metadata", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def classnames() -> list[str]:
    """The 1000 class names in sorted-wnid order (OpenAI's cleaned names, via open_clip)."""
    return list(_zero_shot_metadata().IMAGENET_CLASSNAMES)


def templates() -> list[str]:
    """OpenAI's 80 ImageNet templates as format strings (open_clip stores them as lambdas)."""
    return [t("{}") for t in _zero_shot_metadata().OPENAI_IMAGENET_TEMPLATES]


# ----------------------------------------------------------------------------------------------
# Logit projections: (B, 1000) logits -> (B, K) logits over a set's own classes. The table tells
# which ImageNet class(es) each of its labels stands for.


def _per_label(table: pd.DataFrame | None, column: str) -> list:
    if table is None or column not in table.columns:
        raise UserError(
            f"this test set's table needs a {column!r} column to map the "
            f"1000 ImageNet logits to its classes"
        )
    first = table.drop_duplicates("label").sort_values("label")
    if not np.array_equal(first["label"].to_numpy(), np.arange(len(first))):
        raise UserError(f"labels of a class subset must be 0..K-1; got {first['label'].tolist()}")
    return list(first[column])


def select_columns(logits, table: pd.DataFrame | None):
    """ImageNet-R / -A: column k of the result is the logit of the ImageNet class of label k."""
    import torch

    columns = [int(c) for c in _per_label(table, "imagenet_label")]
    return logits[:, torch.as_tensor(columns, device=logits.device)]


def max_over_mapped(logits, table: pd.DataFrame | None):
    """ObjectNet: the logit of class k is the max over the logits of its ImageNet classes."""
    import torch

    groups = [[int(c) for c in g] for g in _per_label(table, "imagenet_labels")]
    return torch.stack([logits[:, g].max(dim=1).values for g in groups], dim=1)


EVAL_SETS = [
    EvalSet("test", ood=False, description="ImageNet-1k val (ID)"),
    EvalSet("v2", ood=True, description="ImageNetV2 matched-frequency"),
    EvalSet("r", ood=True, description="ImageNet-R, 200 classes", project_logits=select_columns),
    EvalSet("a", ood=True, description="ImageNet-A, 200 classes", project_logits=select_columns),
    EvalSet("sketch", ood=True, description="ImageNet-Sketch"),
    EvalSet(
        "objectnet",
        ood=True,
        description="ObjectNet, 113 classes mapped to ImageNet",
        project_logits=max_over_mapped,
    ),
]


# ----------------------------------------------------------------------------------------------
# Reading the raw folders


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_names(folder: Path) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(folder)
        if not e.name.startswith(".")
        and e.is_file()
        and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
    )


def find_root(folder: Path, is_root: Callable[[Path], bool], what: str, depth: int = 3) -> Path:
    """The folder at or below ``folder`` that holds the data (archives wrap it in one or two
    folders, e.g. ``imagenet-r/``; a linked folder adds ``source/``). Folders with many subfolders
    (class folders) are not searched."""
    if not folder.is_dir():
        raise UserError(
            f"{folder}: not found; fetch and unpack the raw data first "
            f"(the download rules, or `flyp download`)"
        )
    level = [folder]
    for _ in range(depth + 1):
        below = []
        for d in level:
            if is_root(d):
                return d
            subdirs = _subdirs(d)
            if len(subdirs) <= 4:
                below.extend(subdirs)
        level = below
    raise UserError(f"{folder}: no {what} found inside; is it the right archive?")


def _has_wnid_folders(d: Path) -> bool:
    return any(WNID.match(p.name) for p in _subdirs(d))


def read_devkit(devkit: Path) -> tuple[list[str], dict[int, str]]:
    """(the 1000 wnids sorted, {ILSVRC2012_ID: wnid}) from the devkit's ``data/meta.mat``: the
    leaf synsets (no children) are the classes; the IDs are *not* in sorted-wnid order."""
    from scipy.io import loadmat

    meta = devkit / "data" / "meta.mat"
    try:
        synsets = loadmat(meta, squeeze_me=True)["synsets"]
        rows = zip(synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"], strict=True)
        leaves = {int(i): str(w) for i, w, children in rows if int(children) == 0}
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{meta}: not an ILSVRC2012 devkit meta.mat ({e})") from None
    if len(leaves) != 1000 or len(set(leaves.values())) != 1000:
        raise UserError(f"{meta}: {len(leaves)} leaf synsets, expected the 1000 ImageNet classes")
    return sorted(leaves.values()), leaves


def _rows(
    root: Path,
    folders: list[str],
    labels: list[int],
    out_dir: Path,
    extra: dict[str, list] | None = None,
) -> pd.DataFrame:
    """One row per image of ``root/<folder>/``; paths relative to ``out_dir`` (the tables)."""
    out = os.path.abspath(out_dir)
    ids, ys, paths, more = [], [], [], {k: [] for k in extra or {}}
    pairs = progress_bar(
        zip(folders, labels, strict=True),
        total=len(folders),
        unit="folder",
        desc=f"listing {root.name}",
    )
    for i, (folder, label) in enumerate(pairs):
        rel = os.path.relpath(os.path.abspath(root / folder), out)
        for name in _image_names(root / folder):
            ids.append(f"{folder}/{name}")
            ys.append(label)
            paths.append(f"{rel}/{name}".replace(os.sep, "/"))
            for k in more:
                more[k].append(extra[k][i])
    return pd.DataFrame(
        {"image_id": ids, "label": np.asarray(ys, dtype=np.int64), "path": paths, **more}
    )


def _wnid_label(wnid_index: dict[str, int], wnid: str, where: Path) -> int:
    if wnid not in wnid_index:
        raise UserError(f"{where / wnid}: {wnid!r} is not one of the 1000 ImageNet classes")
    return wnid_index[wnid]


def train_table(root: Path, wnid_index: dict[str, int], out_dir: Path) -> pd.DataFrame:
    folders = [p.name for p in _subdirs(root)]
    return _rows(root, folders, [_wnid_label(wnid_index, w, root) for w in folders], out_dir)


def val_table(
    root: Path, devkit: Path, wnid_index: dict[str, int], id_to_wnid: dict[int, str], out_dir: Path
) -> pd.DataFrame:
    """The val set. As archived it is flat: image ``i`` (1-based) has the ILSVRC2012_ID on line
    ``i`` of the devkit's ground truth, and its label is the sorted-wnid index of that ID's wnid.
    A copy already sorted into wnid folders is accepted too, if every image sits in the folder
    the ground truth says."""
    truth = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    if not truth.is_file():
        raise UserError(f"{truth}: not found; is the devkit complete?")
    ids = [int(line) for line in truth.read_text().split()]
    unknown = sorted({i for i in ids if i not in id_to_wnid})
    if unknown:
        raise UserError(f"{truth}: ILSVRC2012_IDs {unknown[:5]} are not classes in meta.mat")
    labels = [wnid_index[id_to_wnid[i]] for i in ids]
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, len(ids) + 1)]
    if (root / names[0]).is_file():  # flat
        files = {n: n for n in _image_names(root)}
    else:  # sorted into wnid folders
        files = {n: f"{d.name}/{n}" for d in _subdirs(root) for n in _image_names(d)}
        label_of = dict(zip(names, labels, strict=True))
        wrong = [
            f
            for n, f in files.items()
            if n in label_of and wnid_index.get(f.split("/")[0]) != label_of[n]
        ]
        if wrong:
            raise UserError(
                f"{root}: {len(wrong)} val images are in another class folder than "
                f"the devkit's ground truth says (first: {wrong[0]})"
            )
    missing = [n for n in names if n not in files]
    if missing:
        raise UserError(
            f"{root}: {len(missing)} of the {len(ids)} val images are missing (first: {missing[0]})"
        )
    rel = os.path.relpath(os.path.abspath(root), os.path.abspath(out_dir)).replace(os.sep, "/")
    return pd.DataFrame(
        {
            "image_id": [n.rsplit(".", 1)[0] for n in names],
            "label": np.asarray(labels, np.int64),
            "path": [f"{rel}/{files[n]}" for n in names],
        }
    )


def v2_table(root: Path, out_dir: Path) -> pd.DataFrame:
    """Folders ``0..999`` are class indices: the label is ``int(name)``, not the folder's position
    in a string sort ("0", "1", "10", "100", ...)."""
    folders = [p.name for p in _subdirs(root)]
    bad = [f for f in folders if not f.isdigit() or int(f) >= 1000]
    if bad:
        raise UserError(f"{root}: folders {bad[:5]} are not class indices 0..999")
    return _rows(root, folders, [int(f) for f in folders], out_dir)


def subset_table(root: Path, wnid_index: dict[str, int], out_dir: Path) -> pd.DataFrame:
    """ImageNet-R / -A: label = position of the wnid folder in sorted order (0..K-1), plus the
    ImageNet label of that wnid for the logit projection."""
    folders = [p.name for p in _subdirs(root) if _image_names(p)]
    imagenet = [_wnid_label(wnid_index, w, root) for w in folders]
    return _rows(
        root, folders, list(range(len(folders))), out_dir, extra={"imagenet_label": imagenet}
    )


def sketch_table(root: Path, wnid_index: dict[str, int], out_dir: Path) -> pd.DataFrame:
    return train_table(root, wnid_index, out_dir)


def objectnet_mapping(root: Path) -> dict[str, list[int]]:
    """{image folder: sorted-wnid indices of its ImageNet classes}, for the ObjectNet classes that
    overlap ImageNet, from the mapping files shipped in ``objectnet-1.0/mappings/``:

    - ``folder_to_objectnet_label.json``: folder -> ObjectNet class name
    - ``objectnet_to_imagenet_1k.json``: ObjectNet name -> ImageNet names joined by "; "
    - ``imagenet_to_label_2012_v2``: line i = the ImageNet name of ImageNet-2012 id i
    - ``pytorch_to_imagenet_2012_id.json``: sorted-wnid (PyTorch) index -> ImageNet-2012 id
    """
    m = root / "mappings"
    try:
        folder_to_name = json.loads((m / "folder_to_objectnet_label.json").read_text())
        name_to_imagenet = json.loads((m / "objectnet_to_imagenet_1k.json").read_text())
        lines = (m / "imagenet_to_label_2012_v2").read_text().splitlines()
        pytorch_to_2012 = json.loads((m / "pytorch_to_imagenet_2012_id.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{m}: cannot read the ObjectNet mapping files ({e})") from None
    to_pytorch = {int(v): int(k) for k, v in pytorch_to_2012.items()}
    index_of_name = {line.strip(): to_pytorch[i] for i, line in enumerate(lines) if line.strip()}
    folder_of = {name: folder for folder, name in folder_to_name.items()}
    mapping = {}
    for name, imagenet_names in name_to_imagenet.items():
        if name not in folder_of:
            raise UserError(f"{m}: ObjectNet class {name!r} has no folder")
        unknown = [n for n in imagenet_names.split("; ") if n not in index_of_name]
        if unknown:
            raise UserError(
                f"{m}: ImageNet class names {unknown} of {name!r} are not in "
                f"imagenet_to_label_2012_v2"
            )
        mapping[folder_of[name]] = sorted(index_of_name[n] for n in imagenet_names.split("; "))
    return mapping


def objectnet_table(root: Path, out_dir: Path) -> pd.DataFrame:
    """Only the folders of classes that map to ImageNet; label = position among them (sorted);
    ``crop``: the border the evaluation removes before its transform."""
    mapping = objectnet_mapping(root)
    images = root / "images"
    folders = [p.name for p in _subdirs(images) if p.name in mapping and _image_names(p)]
    df = _rows(
        images,
        folders,
        list(range(len(folders))),
        out_dir,
        extra={"imagenet_labels": [mapping[f] for f in folders]},
    )
    df["crop"] = np.int64(OBJECTNET_BORDER)
    n_imagenet = len({c for f in folders for c in mapping[f]})
    _log(
        f"objectnet: {len(folders)} classes (of {len(_subdirs(images))} folders) mapped to "
        f"{n_imagenet} ImageNet classes; {len(df)} images evaluated"
    )
    return df


def split_holdout(
    df: pd.DataFrame, size: int, seed: int, keep_in_train: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val): ``size`` rows drawn uniformly with ``seed`` are val, and are taken out of
    train unless ``keep_in_train``; both keep file order."""
    if not 0 < size < len(df):
        raise UserError(f"val_size {size}: must be between 1 and the {len(df)} train images - 1")
    held = np.zeros(len(df), dtype=bool)
    held[np.random.default_rng(seed).choice(len(df), size=size, replace=False)] = True
    train = df if keep_in_train else df[~held]
    return train.reset_index(drop=True), df[held].reset_index(drop=True)


def prepare(
    out_dir: Path,
    *,
    raw_dir: str = "data/raw",
    seed: int = 0,
    val_size: int = 10000,
    val_in_train: bool = False,
) -> None:
    """Index the unpacked archives under ``raw_dir`` (one folder per download, named as in
    ``DOWNLOADS``) into the benchmark's tables in ``out_dir``."""
    raw, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    devkit = find_root(
        raw / "imagenet_devkit",
        lambda d: (d / "data" / "meta.mat").is_file(),
        "ILSVRC2012 devkit (data/meta.mat)",
    )
    wnids, id_to_wnid = read_devkit(devkit)
    wnid_index = {w: i for i, w in enumerate(wnids)}
    train_root = find_root(raw / "imagenet_train", _has_wnid_folders, "wnid folders")
    every_train = train_table(train_root, wnid_index, out_dir)
    train, val = split_holdout(every_train, val_size, seed, val_in_train)
    val_root = find_root(
        raw / "imagenet_val",
        lambda d: (d / "ILSVRC2012_val_00000001.JPEG").is_file() or _has_wnid_folders(d),
        "ILSVRC2012_val_*.JPEG images",
    )
    tables = {
        "train": train,
        "val": val,
        "test": val_table(val_root, devkit, wnid_index, id_to_wnid, out_dir),
        "v2": v2_table(
            find_root(raw / "imagenetv2", lambda d: (d / "0").is_dir(), "class folders 0..999"),
            out_dir,
        ),
        "r": subset_table(
            find_root(raw / "imagenet_r", _has_wnid_folders, "wnid folders"), wnid_index, out_dir
        ),
        "a": subset_table(
            find_root(raw / "imagenet_a", _has_wnid_folders, "wnid folders"), wnid_index, out_dir
        ),
        "sketch": sketch_table(
            find_root(raw / "imagenet_sketch", _has_wnid_folders, "wnid folders"),
            wnid_index,
            out_dir,
        ),
        "objectnet": objectnet_table(
            find_root(
                raw / "objectnet",
                lambda d: (d / "mappings" / "objectnet_to_imagenet_1k.json").is_file(),
                "objectnet-1.0 (mappings/, images/)",
            ),
            out_dir,
        ),
    }
    for name, df in tables.items():
        if df.empty:
            raise UserError(f"{name}: no images found under {raw}")
        write_table(df, out_dir / f"{name}.parquet")
        _log(f"{name}: {len(df)} images, {df['label'].nunique()} classes")


@register_benchmark("imagenet")
def imagenet_benchmark() -> Benchmark:
    return Benchmark(
        name="imagenet",
        classnames=classnames(),
        templates=templates(),
        eval_sets=list(EVAL_SETS),
        prepare=prepare,
        downloads=list(DOWNLOADS),
        description=__doc__.split("\n\n")[0],
    )
