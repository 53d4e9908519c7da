"""Caltech101 (transfer): 101 object classes, top-1 accuracy on a held-out test split.

``101_ObjectCategories/`` has one folder of ``image_*.jpg`` per class and no official split;
``BACKGROUND_Google`` is not a class. The official ``caltech-101.zip`` wraps it once more
(``caltech-101/101_ObjectCategories.tar.gz``): that inner archive is unpacked into the tables'
folder (``images/``), the zip's folder in ``data/raw/`` is left as the download step made it.

The reference code split every class 60/20/20 with an unseeded generator; here the same fractions
are drawn per class from ``split_seed`` and recorded in ``splits.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flyp.datasets import Benchmark, Download, EvalSet, register_benchmark
from flyp.datasets.rawdata import (
    class_folder_images,
    find_dir,
    image_path,
    locate,
    stratified_split,
    write_image_table,
    write_split_record,
)
from flyp.io import UserError

# Class folder -> class name in the prompts (OpenAI CLIP's Caltech101 names, as the reference code
# used them), in sorted-folder order: label i is the i-th folder.
CLASSES = [
    ("Faces", "off-center face"),
    ("Faces_easy", "centered face"),
    ("Leopards", "leopard"),
    ("Motorbikes", "motorbike"),
    ("accordion", "accordion"),
    ("airplanes", "airplane"),
    ("anchor", "anchor"),
    ("ant", "ant"),
    ("barrel", "barrel"),
    ("bass", "bass"),
    ("beaver", "beaver"),
    ("binocular", "binocular"),
    ("bonsai", "bonsai"),
    ("brain", "brain"),
    ("brontosaurus", "brontosaurus"),
    ("buddha", "buddha"),
    ("butterfly", "butterfly"),
    ("camera", "camera"),
    ("cannon", "cannon"),
    ("car_side", "side of a car"),
    ("ceiling_fan", "ceiling fan"),
    ("cellphone", "cellphone"),
    ("chair", "chair"),
    ("chandelier", "chandelier"),
    ("cougar_body", "body of a cougar cat"),
    ("cougar_face", "face of a cougar cat"),
    ("crab", "crab"),
    ("crayfish", "crayfish"),
    ("crocodile", "crocodile"),
    ("crocodile_head", "head of a crocodile"),
    ("cup", "cup"),
    ("dalmatian", "dalmatian"),
    ("dollar_bill", "dollar bill"),
    ("dolphin", "dolphin"),
    ("dragonfly", "dragonfly"),
    ("electric_guitar", "electric guitar"),
    ("elephant", "elephant"),
    ("emu", "emu"),
    ("euphonium", "euphonium"),
    ("ewer", "ewer"),
    ("ferry", "ferry"),
    ("flamingo", "flamingo"),
    ("flamingo_head", "head of a flamingo"),
    ("garfield", "garfield"),
    ("gerenuk", "gerenuk"),
    ("gramophone", "gramophone"),
    ("grand_piano", "grand piano"),
    ("hawksbill", "hawksbill"),
    ("headphone", "headphone"),
    ("hedgehog", "hedgehog"),
    ("helicopter", "helicopter"),
    ("ibis", "ibis"),
    ("inline_skate", "inline skate"),
    ("joshua_tree", "joshua tree"),
    ("kangaroo", "kangaroo"),
    ("ketch", "ketch"),
    ("lamp", "lamp"),
    ("laptop", "laptop"),
    ("llama", "llama"),
    ("lobster", "lobster"),
    ("lotus", "lotus"),
    ("mandolin", "mandolin"),
    ("mayfly", "mayfly"),
    ("menorah", "menorah"),
    ("metronome", "metronome"),
    ("minaret", "minaret"),
    ("nautilus", "nautilus"),
    ("octopus", "octopus"),
    ("okapi", "okapi"),
    ("pagoda", "pagoda"),
    ("panda", "panda"),
    ("pigeon", "pigeon"),
    ("pizza", "pizza"),
    ("platypus", "platypus"),
    ("pyramid", "pyramid"),
    ("revolver", "revolver"),
    ("rhino", "rhino"),
    ("rooster", "rooster"),
    ("saxophone", "saxophone"),
    ("schooner", "schooner"),
    ("scissors", "scissors"),
    ("scorpion", "scorpion"),
    ("sea_horse", "sea horse"),
    ("snoopy", "snoopy (cartoon beagle)"),
    ("soccer_ball", "soccer ball"),
    ("stapler", "stapler"),
    ("starfish", "starfish"),
    ("stegosaurus", "stegosaurus"),
    ("stop_sign", "stop sign"),
    ("strawberry", "strawberry"),
    ("sunflower", "sunflower"),
    ("tick", "tick"),
    ("trilobite", "trilobite"),
    ("umbrella", "umbrella"),
    ("watch", "watch"),
    ("water_lilly", "water lilly"),
    ("wheelchair", "wheelchair"),
    ("wild_cat", "wild cat"),
    ("windsor_chair", "windsor chair"),
    ("wrench", "wrench"),
    ("yin_yang", "yin and yang symbol"),
]
FOLDERS = [folder for folder, _ in CLASSES]
CLASSNAMES = [name for _, name in CLASSES]
EXCLUDED = "BACKGROUND_Google"  # clutter images, not a class

# The reference code's Caltech101 templates (OpenAI CLIP's).
TEMPLATES = [
    "a photo of a {}.",
    "a painting of a {}.",
    "a plastic {}.",
    "a sculpture of a {}.",
    "a sketch of a {}.",
    "a tattoo of a {}.",
    "a toy {}.",
    "a rendition of a {}.",
    "a embroidered {}.",
    "a cartoon {}.",
    "a {} in a video game.",
    "a plushie {}.",
    "a origami {}.",
    "art of a {}.",
    "graffiti of a {}.",
    "a drawing of a {}.",
    "a doodle of a {}.",
    "a photo of the {}.",
    "a painting of the {}.",
    "the plastic {}.",
    "a sculpture of the {}.",
    "a sketch of the {}.",
    "a tattoo of the {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "the embroidered {}.",
    "the cartoon {}.",
    "the {} in a video game.",
    "the plushie {}.",
    "the origami {}.",
    "art of the {}.",
    "graffiti of the {}.",
    "a drawing of the {}.",
    "a doodle of the {}.",
]

DOWNLOADS = [
    Download(
        "caltech101",
        "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
        md5="3138e1922a9193bfa496528edbbc45d0",
    )
]


MARKERS = ["101_ObjectCategories/accordion", "101_ObjectCategories/yin_yang"]
INNER_ARCHIVE = "101_ObjectCategories.tar.gz"


def find_categories(raw: Path, out_dir: Path) -> Path:
    """``101_ObjectCategories/`` in the unpacked download, else in the tables' folder, unpacking
    the zip's inner archive there first when needed."""
    for folder in (raw, out_dir / "images"):
        found = find_dir(folder, MARKERS)
        if found is not None:
            return found / "101_ObjectCategories"
    inner = locate(raw, [INNER_ARCHIVE], "caltech101") / INNER_ARCHIVE
    from flyp.datasets.download import extract_archive

    extract_archive(
        inner, out_dir / "images", progress=False, log=lambda msg: print(msg, file=sys.stderr)
    )
    return locate(out_dir / "images", MARKERS, "caltech101") / "101_ObjectCategories"


def prepare(
    out_dir: Path,
    *,
    raw_dir: str = "data/raw",
    split_seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> None:
    """train/val/test tables from ``101_ObjectCategories/`` (in ``raw_dir/caltech101``): each
    class split ``val_fraction`` / ``test_fraction`` / rest (train), drawn from ``split_seed``."""
    out_dir = Path(out_dir)
    categories = find_categories(Path(raw_dir) / "caltech101", out_dir)
    found = sorted(d.name for d in categories.iterdir() if d.is_dir() and d.name != EXCLUDED)
    if found != FOLDERS:
        raise UserError(
            f"{categories}: expected the 101 Caltech101 class folders, found "
            f"{len(found)} (differing: {sorted(set(found) ^ set(FOLDERS))[:5]})"
        )
    files, labels = class_folder_images(categories, FOLDERS, "*.jpg")
    fractions = {"val": val_fraction, "test": test_fraction}
    splits = stratified_split(labels, fractions, split_seed)
    for table, rows in splits.items():
        write_image_table(
            out_dir / f"{table}.parquet",
            [f"{files[i].parent.name}/{files[i].stem}" for i in rows],
            [labels[i] for i in rows],
            [image_path(files[i], out_dir) for i in rows],
        )
    write_split_record(
        out_dir,
        {
            "benchmark": "caltech101",
            "split": "seeded, per class",
            "seed": split_seed,
            "fractions": {**fractions, "train": "rest"},
            "sizes": {table: len(rows) for table, rows in splits.items()},
        },
    )


@register_benchmark("caltech101")
def caltech101_benchmark() -> Benchmark:
    return Benchmark(
        name="caltech101",
        classnames=list(CLASSNAMES),
        templates=list(TEMPLATES),
        eval_sets=[EvalSet("test", ood=False, description="seeded per-class test split")],
        prepare=prepare,
        downloads=list(DOWNLOADS),
        description="Caltech101: 101 object categories (transfer)",
    )
