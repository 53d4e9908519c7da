"""StanfordCars (transfer): 196 car models, top-1 accuracy on the official test split.

Stanford no longer serves the dataset, so there is no URL: place a copy in torchvision's layout
(``devkit/{cars_meta,cars_train_annos}.mat``, ``cars_train/``, ``cars_test/`` and
``cars_test_annos_withlabels.mat``, beside ``devkit/`` or inside it) and set
``presets.cars.data.stanford_cars`` in params.yaml to that folder (or to an archive of it). The
official train split (8,144 images) is split again into train and a seeded per-class ``val``
(model selection); the official test split (8,041) is the test set. The reference code drew its
val split with ``train_test_split(test_size=0.2, random_state=10)`` over all classes at once; here
the draw is per class, from ``split_seed``, and recorded in ``splits.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flyp.datasets import Benchmark, Download, EvalSet, register_benchmark
from flyp.datasets.rawdata import (
    check_exist,
    image_path,
    locate,
    stratified_split,
    write_image_table,
    write_split_record,
)
from flyp.io import UserError

# Class names in the devkit's order (cars_meta.mat; label = annotation "class" - 1), as OpenAI CLIP
# and the reference code prompt them. prepare checks them against cars_meta.mat.
CLASSNAMES = [
    "AM General Hummer SUV 2000",
    "Acura RL Sedan 2012",
    "Acura TL Sedan 2012",
    "Acura TL Type-S 2008",
    "Acura TSX Sedan 2012",
    "Acura Integra Type R 2001",
    "Acura ZDX Hatchback 2012",
    "Aston Martin V8 Vantage Convertible 2012",
    "Aston Martin V8 Vantage Coupe 2012",
    "Aston Martin Virage Convertible 2012",
    "Aston Martin Virage Coupe 2012",
    "Audi RS 4 Convertible 2008",
    "Audi A5 Coupe 2012",
    "Audi TTS Coupe 2012",
    "Audi R8 Coupe 2012",
    "Audi V8 Sedan 1994",
    "Audi 100 Sedan 1994",
    "Audi 100 Wagon 1994",
    "Audi TT Hatchback 2011",
    "Audi S6 Sedan 2011",
    "Audi S5 Convertible 2012",
    "Audi S5 Coupe 2012",
    "Audi S4 Sedan 2012",
    "Audi S4 Sedan 2007",
    "Audi TT RS Coupe 2012",
    "BMW ActiveHybrid 5 Sedan 2012",
    "BMW 1 Series Convertible 2012",
    "BMW 1 Series Coupe 2012",
    "BMW 3 Series Sedan 2012",
    "BMW 3 Series Wagon 2012",
    "BMW 6 Series Convertible 2007",
    "BMW X5 SUV 2007",
    "BMW X6 SUV 2012",
    "BMW M3 Coupe 2012",
    "BMW M5 Sedan 2010",
    "BMW M6 Convertible 2010",
    "BMW X3 SUV 2012",
    "BMW Z4 Convertible 2012",
    "Bentley Continental Supersports Conv. Convertible 2012",
    "Bentley Arnage Sedan 2009",
    "Bentley Mulsanne Sedan 2011",
    "Bentley Continental GT Coupe 2012",
    "Bentley Continental GT Coupe 2007",
    "Bentley Continental Flying Spur Sedan 2007",
    "Bugatti Veyron 16.4 Convertible 2009",
    "Bugatti Veyron 16.4 Coupe 2009",
    "Buick Regal GS 2012",
    "Buick Rainier SUV 2007",
    "Buick Verano Sedan 2012",
    "Buick Enclave SUV 2012",
    "Cadillac CTS-V Sedan 2012",
    "Cadillac SRX SUV 2012",
    "Cadillac Escalade EXT Crew Cab 2007",
    "Chevrolet Silverado 1500 Hybrid Crew Cab 2012",
    "Chevrolet Corvette Convertible 2012",
    "Chevrolet Corvette ZR1 2012",
    "Chevrolet Corvette Ron Fellows Edition Z06 2007",
    "Chevrolet Traverse SUV 2012",
    "Chevrolet Camaro Convertible 2012",
    "Chevrolet HHR SS 2010",
    "Chevrolet Impala Sedan 2007",
    "Chevrolet Tahoe Hybrid SUV 2012",
    "Chevrolet Sonic Sedan 2012",
    "Chevrolet Express Cargo Van 2007",
    "Chevrolet Avalanche Crew Cab 2012",
    "Chevrolet Cobalt SS 2010",
    "Chevrolet Malibu Hybrid Sedan 2010",
    "Chevrolet TrailBlazer SS 2009",
    "Chevrolet Silverado 2500HD Regular Cab 2012",
    "Chevrolet Silverado 1500 Classic Extended Cab 2007",
    "Chevrolet Express Van 2007",
    "Chevrolet Monte Carlo Coupe 2007",
    "Chevrolet Malibu Sedan 2007",
    "Chevrolet Silverado 1500 Extended Cab 2012",
    "Chevrolet Silverado 1500 Regular Cab 2012",
    "Chrysler Aspen SUV 2009",
    "Chrysler Sebring Convertible 2010",
    "Chrysler Town and Country Minivan 2012",
    "Chrysler 300 SRT-8 2010",
    "Chrysler Crossfire Convertible 2008",
    "Chrysler PT Cruiser Convertible 2008",
    "Daewoo Nubira Wagon 2002",
    "Dodge Caliber Wagon 2012",
    "Dodge Caliber Wagon 2007",
    "Dodge Caravan Minivan 1997",
    "Dodge Ram Pickup 3500 Crew Cab 2010",
    "Dodge Ram Pickup 3500 Quad Cab 2009",
    "Dodge Sprinter Cargo Van 2009",
    "Dodge Journey SUV 2012",
    "Dodge Dakota Crew Cab 2010",
    "Dodge Dakota Club Cab 2007",
    "Dodge Magnum Wagon 2008",
    "Dodge Challenger SRT8 2011",
    "Dodge Durango SUV 2012",
    "Dodge Durango SUV 2007",
    "Dodge Charger Sedan 2012",
    "Dodge Charger SRT-8 2009",
    "Eagle Talon Hatchback 1998",
    "FIAT 500 Abarth 2012",
    "FIAT 500 Convertible 2012",
    "Ferrari FF Coupe 2012",
    "Ferrari California Convertible 2012",
    "Ferrari 458 Italia Convertible 2012",
    "Ferrari 458 Italia Coupe 2012",
    "Fisker Karma Sedan 2012",
    "Ford F-450 Super Duty Crew Cab 2012",
    "Ford Mustang Convertible 2007",
    "Ford Freestar Minivan 2007",
    "Ford Expedition EL SUV 2009",
    "Ford Edge SUV 2012",
    "Ford Ranger SuperCab 2011",
    "Ford GT Coupe 2006",
    "Ford F-150 Regular Cab 2012",
    "Ford F-150 Regular Cab 2007",
    "Ford Focus Sedan 2007",
    "Ford E-Series Wagon Van 2012",
    "Ford Fiesta Sedan 2012",
    "GMC Terrain SUV 2012",
    "GMC Savana Van 2012",
    "GMC Yukon Hybrid SUV 2012",
    "GMC Acadia SUV 2012",
    "GMC Canyon Extended Cab 2012",
    "Geo Metro Convertible 1993",
    "HUMMER H3T Crew Cab 2010",
    "HUMMER H2 SUT Crew Cab 2009",
    "Honda Odyssey Minivan 2012",
    "Honda Odyssey Minivan 2007",
    "Honda Accord Coupe 2012",
    "Honda Accord Sedan 2012",
    "Hyundai Veloster Hatchback 2012",
    "Hyundai Santa Fe SUV 2012",
    "Hyundai Tucson SUV 2012",
    "Hyundai Veracruz SUV 2012",
    "Hyundai Sonata Hybrid Sedan 2012",
    "Hyundai Elantra Sedan 2007",
    "Hyundai Accent Sedan 2012",
    "Hyundai Genesis Sedan 2012",
    "Hyundai Sonata Sedan 2012",
    "Hyundai Elantra Touring Hatchback 2012",
    "Hyundai Azera Sedan 2012",
    "Infiniti G Coupe IPL 2012",
    "Infiniti QX56 SUV 2011",
    "Isuzu Ascender SUV 2008",
    "Jaguar XK XKR 2012",
    "Jeep Patriot SUV 2012",
    "Jeep Wrangler SUV 2012",
    "Jeep Liberty SUV 2012",
    "Jeep Grand Cherokee SUV 2012",
    "Jeep Compass SUV 2012",
    "Lamborghini Reventon Coupe 2008",
    "Lamborghini Aventador Coupe 2012",
    "Lamborghini Gallardo LP 570-4 Superleggera 2012",
    "Lamborghini Diablo Coupe 2001",
    "Land Rover Range Rover SUV 2012",
    "Land Rover LR2 SUV 2012",
    "Lincoln Town Car Sedan 2011",
    "MINI Cooper Roadster Convertible 2012",
    "Maybach Landaulet Convertible 2012",
    "Mazda Tribute SUV 2011",
    "McLaren MP4-12C Coupe 2012",
    "Mercedes-Benz 300-Class Convertible 1993",
    "Mercedes-Benz C-Class Sedan 2012",
    "Mercedes-Benz SL-Class Coupe 2009",
    "Mercedes-Benz E-Class Sedan 2012",
    "Mercedes-Benz S-Class Sedan 2012",
    "Mercedes-Benz Sprinter Van 2012",
    "Mitsubishi Lancer Sedan 2012",
    "Nissan Leaf Hatchback 2012",
    "Nissan NV Passenger Van 2012",
    "Nissan Juke Hatchback 2012",
    "Nissan 240SX Coupe 1998",
    "Plymouth Neon Coupe 1999",
    "Porsche Panamera Sedan 2012",
    "Ram C/V Cargo Van Minivan 2012",
    "Rolls-Royce Phantom Drophead Coupe Convertible 2012",
    "Rolls-Royce Ghost Sedan 2012",
    "Rolls-Royce Phantom Sedan 2012",
    "Scion xD Hatchback 2012",
    "Spyker C8 Convertible 2009",
    "Spyker C8 Coupe 2009",
    "Suzuki Aerio Sedan 2007",
    "Suzuki Kizashi Sedan 2012",
    "Suzuki SX4 Hatchback 2012",
    "Suzuki SX4 Sedan 2012",
    "Tesla Model S Sedan 2012",
    "Toyota Sequoia SUV 2012",
    "Toyota Camry Sedan 2012",
    "Toyota Corolla Sedan 2012",
    "Toyota 4Runner SUV 2012",
    "Volkswagen Golf Hatchback 2012",
    "Volkswagen Golf Hatchback 1991",
    "Volkswagen Beetle Hatchback 2012",
    "Volvo C30 Hatchback 2012",
    "Volvo 240 Sedan 1993",
    "Volvo XC90 SUV 2007",
    "smart fortwo Convertible 2012",
]

# The reference code's StanfordCars templates (OpenAI CLIP's).
TEMPLATES = [
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of my {}.",
    "i love my {}!",
    "a photo of my dirty {}.",
    "a photo of my clean {}.",
    "a photo of my new {}.",
    "a photo of my old {}.",
]

WHERE_TO_GET = (
    "StanfordCars is no longer served by Stanford (ai.stanford.edu/~jkrause/cars/); use a copy in "
    "torchvision's StanfordCars layout (devkit/, cars_train/, cars_test/, "
    "cars_test_annos_withlabels.mat), e.g. from a mirror of it on Kaggle, and set "
    "presets.cars.data.stanford_cars in params.yaml to that folder or an archive of it"
)
DOWNLOADS = [Download("stanford_cars", None, manual=WHERE_TO_GET)]
MARKERS = ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_train", "cars_test"]
TEST_ANNOTATIONS = "cars_test_annos_withlabels.mat"


def read_annotations(path: Path) -> tuple[list[str], np.ndarray]:
    """(file names, labels 0..195) of a devkit annotation file (fields ``fname``, ``class``)."""
    from scipy.io import loadmat

    annotations = np.atleast_1d(loadmat(path, squeeze_me=True)["annotations"])
    names = [str(a) for a in annotations["fname"]]
    labels = np.asarray(annotations["class"], dtype=np.int64) - 1  # classes are 1-based
    if len(labels) and not (0 <= labels.min() and labels.max() < len(CLASSNAMES)):
        raise UserError(f"{path}: classes outside 1..{len(CLASSNAMES)}")
    return names, labels


def check_classnames(path: Path) -> None:
    from scipy.io import loadmat

    names = [str(n) for n in np.atleast_1d(loadmat(path, squeeze_me=True)["class_names"])]
    if names != CLASSNAMES:
        wrong = next(
            (i for i, (a, b) in enumerate(zip(names, CLASSNAMES, strict=False)) if a != b),
            min(len(names), len(CLASSNAMES)),
        )
        raise UserError(
            f"{path}: {len(names)} class names, differing from the expected 196 at label {wrong}"
        )


def prepare(
    out_dir: Path, *, raw_dir: str = "data/raw", split_seed: int = 0, val_fraction: float = 0.2
) -> None:
    """train/val/test tables from the StanfordCars folder in ``raw_dir/stanford_cars``: the
    official test split, and the official train split less a seeded per-class ``val``."""
    out_dir = Path(out_dir)
    root = locate(Path(raw_dir) / "stanford_cars", MARKERS, "cars", WHERE_TO_GET)
    check_classnames(root / "devkit" / "cars_meta.mat")
    candidates = [root / TEST_ANNOTATIONS, root / "devkit" / TEST_ANNOTATIONS]
    test_annotations = next((p for p in candidates if p.is_file()), None)
    if test_annotations is None:
        raise UserError(
            f"cars: {TEST_ANNOTATIONS} (the test labels) is in neither {root} nor "
            f"{root / 'devkit'}. {WHERE_TO_GET}"
        )
    train_names, train_labels = read_annotations(root / "devkit" / "cars_train_annos.mat")
    test_names, test_labels = read_annotations(test_annotations)
    splits = stratified_split(train_labels, {"val": val_fraction}, split_seed)
    sources = {
        "train": ("cars_train", train_names, train_labels, splits["train"]),
        "val": ("cars_train", train_names, train_labels, splits["val"]),
        "test": ("cars_test", test_names, test_labels, np.arange(len(test_names))),
    }
    sizes = {}
    for table, (folder, names, labels, rows) in sources.items():
        files = [root / folder / names[i] for i in rows]
        check_exist(files, f"cars {table}")
        sizes[table] = write_image_table(
            out_dir / f"{table}.parquet",
            [f"{folder}/{names[i]}" for i in rows],
            labels[rows],
            [image_path(f, out_dir) for f in files],
        )
    write_split_record(
        out_dir,
        {
            "benchmark": "cars",
            "split": "official test; val drawn per class from official train",
            "seed": split_seed,
            "fractions": {"val": val_fraction, "train": "rest"},
            "sizes": sizes,
        },
    )


@register_benchmark("cars")
def cars_benchmark() -> Benchmark:
    return Benchmark(
        name="cars",
        classnames=list(CLASSNAMES),
        templates=list(TEMPLATES),
        eval_sets=[EvalSet("test", ood=False, description="official StanfordCars test split")],
        prepare=prepare,
        downloads=list(DOWNLOADS),
        description="StanfordCars: 196 car models (transfer)",
    )
