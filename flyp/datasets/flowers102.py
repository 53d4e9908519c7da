"""Flowers102 (transfer): 102 flower species, top-1 accuracy on the official test split.

Three downloads from the Oxford VGG site: ``102flowers.tgz`` (``jpg/image_00001.jpg`` ...),
``imagelabels.mat`` (``labels``: the 1-based class of image i at position i - 1) and ``setid.mat``
(``trnid``, ``valid``, ``tstid``: 1-based image ids of the official train (1,020), val (1,020) and
test (6,149) splits, used as they are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flyp.datasets import Benchmark, Download, EvalSet, register_benchmark
from flyp.datasets.rawdata import (
    check_exist,
    image_path,
    locate,
    write_image_table,
    write_split_record,
)
from flyp.io import UserError

# Class names by label (imagelabels.mat's class - 1), as OpenAI CLIP and the reference code name
# them.
CLASSNAMES = [
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
    "moon orchid",
    "bird of paradise",
    "monkshood",
    "globe thistle",
    "snapdragon",
    "colt's foot",
    "king protea",
    "spear thistle",
    "yellow iris",
    "globe flower",
    "purple coneflower",
    "peruvian lily",
    "balloon flower",
    "giant white arum lily",
    "fire lily",
    "pincushion flower",
    "fritillary",
    "red ginger",
    "grape hyacinth",
    "corn poppy",
    "prince of wales feathers",
    "stemless gentian",
    "artichoke",
    "sweet william",
    "carnation",
    "garden phlox",
    "love in the mist",
    "mexican aster",
    "alpine sea holly",
    "ruby-lipped cattleya",
    "cape flower",
    "great masterwort",
    "siam tulip",
    "lenten rose",
    "barbeton daisy",
    "daffodil",
    "sword lily",
    "poinsettia",
    "bolero deep blue",
    "wallflower",
    "marigold",
    "buttercup",
    "oxeye daisy",
    "common dandelion",
    "petunia",
    "wild pansy",
    "primula",
    "sunflower",
    "pelargonium",
    "bishop of llandaff",
    "gaura",
    "geranium",
    "orange dahlia",
    "pink and yellow dahlia",
    "cautleya spicata",
    "japanese anemone",
    "black-eyed susan",
    "silverbush",
    "californian poppy",
    "osteospermum",
    "spring crocus",
    "bearded iris",
    "windflower",
    "tree poppy",
    "gazania",
    "azalea",
    "water lily",
    "rose",
    "thorn apple",
    "morning glory",
    "passion flower",
    "lotus",
    "toad lily",
    "anthurium",
    "frangipani",
    "clematis",
    "hibiscus",
    "columbine",
    "desert-rose",
    "tree mallow",
    "magnolia",
    "cyclamen",
    "watercress",
    "canna lily",
    "hippeastrum",
    "bee balm",
    "air plant",
    "foxglove",
    "bougainvillea",
    "camellia",
    "mallow",
    "mexican petunia",
    "bromelia",
    "blanket flower",
    "trumpet creeper",
    "blackberry lily",
]
TEMPLATES = ["a photo of a {}, a type of flower."]

_SITE = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
DOWNLOADS = [
    Download(
        "flowers102_images",
        _SITE + "102flowers.tgz",
        size=344_862_509,
        md5="52808999861908f626f3c1f4e79d11fa",
    ),
    # (checksums of the two .mat files as torchvision lists them)
    Download(
        "flowers102_labels", _SITE + "imagelabels.mat", md5="e0620be6f572b9609742df49c70aed4d"
    ),
    Download("flowers102_setid", _SITE + "setid.mat", md5="a5357ecc9cb78c4bef273ce3793fc85c"),
]
SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}  # table -> setid.mat field


def prepare(out_dir: Path, *, raw_dir: str = "data/raw") -> None:
    """train/val/test tables of the official splits, from the three unpacked downloads in
    ``raw_dir`` (``flowers102_images/``, ``flowers102_labels/``, ``flowers102_setid/``)."""
    from scipy.io import loadmat

    out_dir, raw = Path(out_dir), Path(raw_dir)
    images = locate(raw / "flowers102_images", ["jpg/image_00001.jpg"], "flowers102") / "jpg"
    labels_mat = locate(raw / "flowers102_labels", ["imagelabels.mat"], "flowers102")
    setid_mat = locate(raw / "flowers102_setid", ["setid.mat"], "flowers102")
    labels = np.atleast_1d(loadmat(labels_mat / "imagelabels.mat", squeeze_me=True)["labels"])
    labels = labels.astype(np.int64) - 1  # 1-based classes
    if labels.min() < 0 or labels.max() >= len(CLASSNAMES):
        raise UserError(f"{labels_mat}: classes outside 1..{len(CLASSNAMES)}")
    sets = loadmat(setid_mat / "setid.mat", squeeze_me=True)
    sizes = {}
    for table, field in SPLITS.items():
        ids = np.atleast_1d(sets[field]).astype(np.int64)  # 1-based image ids
        if ids.min() < 1 or ids.max() > len(labels):
            raise UserError(f"{setid_mat}: {field} has image ids outside 1..{len(labels)}")
        files = [images / f"image_{i:05d}.jpg" for i in ids]
        check_exist(files, f"flowers102 {table}")
        sizes[table] = write_image_table(
            out_dir / f"{table}.parquet",
            [f"image_{i:05d}" for i in ids],
            labels[ids - 1],
            [image_path(f, out_dir) for f in files],
        )
    write_split_record(
        out_dir,
        {
            "benchmark": "flowers102",
            "split": "official (setid.mat)",
            "setid_fields": SPLITS,
            "sizes": sizes,
        },
    )


@register_benchmark("flowers102")
def flowers102_benchmark() -> Benchmark:
    return Benchmark(
        name="flowers102",
        classnames=list(CLASSNAMES),
        templates=list(TEMPLATES),
        eval_sets=[EvalSet("test", ood=False, description="official Flowers102 test split")],
        prepare=prepare,
        downloads=list(DOWNLOADS),
        description="Oxford Flowers102: 102 flower species (transfer)",
    )
