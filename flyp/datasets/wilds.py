"""The WILDS benchmarks of the paper: iWildCam (v2.0) and FMoW (v1.1).

Splits are WILDS's own ("official" split scheme), with FLYP's naming made explicit:

=========  =============================  ======================================================
table      WILDS split                    role here
=========  =============================  ======================================================
train      train                          finetuning
val        id_val                         model selection (the epoch kept)
id_test    id_test                        ID test set
ood_test   test                           OOD test set
ood_val    val (OOD validation)           written for analysis; never used for selection
=========  =============================  ======================================================

Metrics (docs/reference.md, "Benchmarks, splits and metrics"): iWildCam is scored with macro-F1
over the labels present in the test set (ID and OOD); FMoW's ID test set with average accuracy and
its OOD test set with the accuracy of its worst region, as WILDS and the reference report them:
region "Other" (countries that country_code_mapping.csv lacks) is left out, and countries it gives
no region form a region of their own, "nan", which counts (``fmow_regions``). The metrics are
registered in ``flyp.scoring``; the tables carry what they need (FMoW's ``region``).

The codalab host of WILDS has been unreliable for years: ``presets.<benchmark>.data.<download>``
in params.yaml may name an archive placed by hand, a mirror, or an already extracted folder (e.g.
``iwildcam_v2.0/`` made by ``wilds.get_dataset``), which the download rules link into
``data/raw/<download>/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from flyp.datasets import Benchmark, Download, EvalSet, register_benchmark
from flyp.datasets.parquet import write_table
from flyp.datasets.rawdata import check_exist, image_path, locate, write_split_record
from flyp.io import UserError

# ----------------------------------------------------------------------------------------------
# iWildCam

# (category_id, name in categories.csv, English name) per label y = 0..181, as in WILDS v2.0's
# categories.csv (rows with y < 99999) and the English names of the reference code's labels.csv.
# The prompts use the English names, lowercased, as the reference code did (its zero-shot and
# finetuned numbers come from them); prepare checks the data's categories.csv against the middle
# column, so another release cannot be read with shifted names.
IWILDCAM_CATEGORIES = [
    (0, "empty", "empty"),
    (2, "tayassu pecari", "white-lipped peccary"),
    (3, "dasyprocta punctata", "central american agouti"),
    (4, "cuniculus paca", "lowland paca"),
    (6, "puma concolor", "cougar"),
    (7, "tapirus terrestris", "south american tapir"),
    (8, "pecari tajacu", "collared peccary"),
    (9, "mazama americana", "red brocket"),
    (10, "leopardus pardalis", "ocelot"),
    (12, "geotrygon montana", "ruddy quail-dove"),
    (13, "nasua nasua", "south american coati"),
    (14, "dasypus novemcinctus", "nine-banded armadillo"),
    (15, "eira barbara", "tayra"),
    (16, "didelphis marsupialis", "common opossum"),
    (20, "procyon cancrivorus", "crab-eating raccoon"),
    (24, "panthera onca", "jaguar"),
    (25, "myrmecophaga tridactyla", "giant anteater"),
    (26, "tinamus major", "great tinamou"),
    (32, "sylvilagus brasiliensis", "tapeti"),
    (44, "puma yagouaroundi", "jaguarundi"),
    (50, "leopardus wiedii", "margay"),
    (62, "mazama gouazoubira", "brown brocket"),
    (67, "philander opossum", "gray four-eyed opossum"),
    (70, "capra aegagrus", "wild goat"),
    (71, "bos taurus", "cattle cow bull"),
    (72, "ovis aries", "sheep"),
    (73, "canis lupus", "wolf"),
    (74, "lepus saxatilis", "scrub hare"),
    (78, "papio anubis", "olive baboon"),
    (80, "genetta genetta", "common genet"),
    (83, "tragelaphus scriptus", "cape bushbuck"),
    (89, "herpestes sanguineus", "slender mongoose"),
    (90, "loxodonta africana", "african bush elephant"),
    (91, "cricetomys gambianus", "gambian pouched rat"),
    (92, "raphicerus campestris", "steenbok"),
    (94, "hyaena hyaena", "striped hyena"),
    (96, "aepyceros melampus", "impala"),
    (97, "crocuta crocuta", "spotted hyena"),
    (98, "caracal caracal", "caracal"),
    (99, "equus ferus", "wild horse"),
    (100, "panthera leo", "lion"),
    (101, "tragelaphus oryx", "common eland"),
    (102, "kobus ellipsiprymnus", "waterbuck"),
    (103, "phacochoerus africanus", "common warthog"),
    (104, "panthera pardus", "leopard"),
    (106, "ichneumia albicauda", "white-tailed mongoose"),
    (108, "canis mesomelas", "black-backed jackal"),
    (110, "syncerus caffer", "african buffalo"),
    (111, "equus quagga", "plains zebra"),
    (112, "giraffa camelopardalis", "giraffe"),
    (113, "alcelaphus buselaphus", "hartebeest"),
    (114, "chlorocebus pygerythrus", "vervet monkey"),
    (115, "madoqua guentheri", "günther's dik-dik"),
    (116, "potamochoerus larvatus", "bushpig"),
    (118, "nanger granti", "grant's gazelle"),
    (119, "eudorcas thomsonii", "thomson's gazelle"),
    (120, "struthio camelus", "common ostrich"),
    (121, "orycteropus afer", "aardvark"),
    (122, "acinonyx jubatus", "cheetah"),
    (123, "eupodotis senegalensis", "white-bellied bustard"),
    (124, "felis silvestris", "wildcat"),
    (127, "oryx beisa", "east african oryx"),
    (129, "lophotis gindiana", "buff-crested bustard"),
    (130, "ardeotis kori", "kori bustard"),
    (134, "lissotis melanogaster", "black-bellied bustard"),
    (139, "argusianus argus", "great argus"),
    (141, "prionailurus bengalensis", "leopard cat"),
    (142, "hemigalus derbyanus", "banded palm civet"),
    (144, "muntiacus muntjak", "indian muntjac"),
    (145, "sus scrofa", "wild boar"),
    (147, "helarctos malayanus", "sun bear"),
    (150, "rusa unicolor", "sambar deer"),
    (152, "hystrix brachyura", "malayan porcupine"),
    (153, "pardofelis temminckii", "asian golden cat"),
    (154, "panthera tigris", "tiger"),
    (156, "lariscus insignis", "three-striped ground squirrel"),
    (159, "chalcophaps indica", "common emerald dove"),
    (161, "genetta tigrina", "cape genet"),
    (162, "hystrix cristata", "crested porcupine"),
    (163, "lycaon pictus", "african wild dog"),
    (166, "procavia capensis", "rock hyrax"),
    (175, "canis familiaris", "dog"),
    (177, "unknown bird", "unknown bird"),
    (198, "unknown bat", "unknown bat"),
    (221, "momotus momota", "amazonian motmot"),
    (230, "dasyprocta fuliginosa", "black agouti"),
    (235, "geotrygon sp", "geotrygon"),
    (240, "nasua narica", "white-nosed coati"),
    (242, "tamandua mexicana", "northern tamandua"),
    (243, "didelphis sp", "opossum"),
    (245, "penelope purpurascens", "crested guan"),
    (251, "phaetornis sp", "hummingbird"),
    (253, "brotogeris sp", "plain parakeet"),
    (256, "camelus dromedarius", "dromedary"),
    (257, "otocyon megalotis", "bat-eared fox"),
    (258, "acryllium vulturinum", "vulturine guineafowl"),
    (259, "equus grevyi", "zebra"),
    (262, "proteles cristata", "aardwolf"),
    (265, "leptailurus serval", "serval"),
    (267, "tragelaphus strepsiceros", "greater kudu"),
    (268, "hippopotamus amphibius", "hippopotamus"),
    (273, "burhinus capensis", "spotted thick-knee"),
    (291, "paguma larvata", "masked palm civet"),
    (292, "pardofelis marmorata", "marbled cat"),
    (294, "cuon alpinus", "dhole"),
    (296, "varanus salvator", "asian water monitor"),
    (299, "martes flavigula", "yellow-throated marten"),
    (300, "prionodon linsang", "banded linsang"),
    (301, "rollulus rouloul", "crested partridge"),
    (302, "lophura inornata", "salvadori's pheasant"),
    (306, "polyplectron chalcurum", "bronze-tailed peacock-pheasant"),
    (307, "manis javanica", "sunda pangolin"),
    (309, "capricornis sumatraensis", "sumatran serow"),
    (310, "macaca sp", "macaque"),
    (315, "francolinus nobilis", "handsome spurfowl"),
    (316, "cercopithecus lhoesti", "l'hoest's monkey"),
    (317, "cephalophus nigrifrons", "black-fronted duiker"),
    (318, "atherurus africanus", "african brush-tailed porcupine"),
    (319, "pan troglodytes", "chimpanzee"),
    (320, "cercopithecus mitis", "blue monkey"),
    (321, "funisciurus carruthersi", "mountain squirrel"),
    (322, "motacilla flava", "western yellow wagtail"),
    (323, "andropadus latirostris", "yellow-whiskered greenbul"),
    (324, "andropadus virens", "little greenbul"),
    (325, "thamnomys venustus", "charming thicket rat"),
    (326, "protoxerus stangeri", "forest giant squirrel"),
    (327, "paraxerus boehmi", "boehm's bush squirrel"),
    (328, "cephalophus silvicultor", "yellow-backed duiker"),
    (330, "oenomys hypoxanthus", "common rufous-nosed rat"),
    (333, "melocichla mentalis", "moustached grass warbler"),
    (334, "hybomys univittatus", "peters's striped mouse"),
    (335, "colomys goslingi", "african wading rat"),
    (336, "hylomyscus stella", "stella wood mouse"),
    (337, "genetta servalina", "servaline genet"),
    (338, "canis adustus", "side-striped jackal"),
    (340, "mus minutoides", "african pygmy mouse"),
    (342, "musophaga rossae", "ross's turaco"),
    (344, "turtur tympanistria", "tambourine dove"),
    (345, "praomys tullbergi", "tullberg's soft-furred mouse"),
    (346, "malacomys longipes", "big-eared swamp rat"),
    (350, "alopochen aegyptiaca", "egyptian goose"),
    (352, "deomys ferrugineus", "link rat"),
    (353, "francolinus africanus", "grey-winged francolin"),
    (356, "turdus olivaceus", "olive thrush"),
    (370, "mazama sp", "brocket deer"),
    (371, "urocyon cinereoargenteus", "gray fox"),
    (372, "meleagris ocellata", "ocellated turkey"),
    (374, "crax rubra", "great curassow"),
    (375, "agouti paca", "lowland paca"),
    (376, "tapirus bairdii", "baird's tapir"),
    (377, "procyon lotor", "raccoon"),
    (378, "odocoileus virginianus", "white-tailed deer"),
    (379, "leptotila plumbeiceps", "grey-headed dove"),
    (380, "mazama temama", "central american red brocket"),
    (382, "conepatus semistriatus", "striped hog-nosed skunk"),
    (384, "mazama pandora", "yucatan brown brocket"),
    (385, "ortalis vetula", "plain chachalaca"),
    (389, "presbytis thomasi", "thomas's langur"),
    (390, "neofelis diardi", "sunda clouded leopard"),
    (391, "arctonyx hoevenii", "sumatran hog badger"),
    (402, "tragulus sp", "mouse-deer"),
    (405, "dendrocitta occipitalis", "sumatran treepie"),
    (406, "niltava sumatrana", "rufous-vented niltava"),
    (408, "leiothrix argentauris", "silver-eared mesia"),
    (410, "arborophila rubrirostris", "red-billed partridge"),
    (413, "lophura sp", "gallopheasants"),
    (414, "myiophoneus glaucinus", "javan whistling thrush"),
    (415, "lophura erythrophthalma", "crestless fireback"),
    (416, "spilornis cheela", "crested serpent eagle"),
    (417, "myiophoneus caeruleus", "blue whistling thrush"),
    (418, "herpestes semitorquatus", "collared mongoose"),
    (422, "cerdocyon thous", "crab-eating fox"),
    (558, "motorcycle", "motorcycle"),
    (559, "peromyscus sp", "deer mouse"),
    (562, "puma yagoroundi", "jaguarundi"),
    (563, "tigrisoma mexicanum", "bare-throated tiger heron"),
    (565, "claravis pretiosa", "blue ground dove"),
    (566, "sciurus sp", "red squirrel"),
    (567, "ave desconocida", "unknown bird"),
    (568, "aramides cajanea", "grey-cowled wood rail"),
    (569, "unknown dove", "unknown dove"),
    (571, "mazama temama", "central american red brocket"),
]
IWILDCAM_CLASSNAMES = [english for _, _, english in IWILDCAM_CATEGORIES]
IWILDCAM_TEMPLATES = ["a photo of {}.", "{} in the wild."]
IWILDCAM_MARKERS = ("metadata.csv", "categories.csv", "train")
IWILDCAM_URL = (
    "https://worksheets.codalab.org/rest/bundles/0x6313da2b204647e79a14b468131fcd64/contents/blob/"
)
# Table name -> WILDS split of metadata.csv's ``split`` column.
IWILDCAM_SPLITS = {
    "train": "train",
    "val": "id_val",
    "id_test": "id_test",
    "ood_test": "test",
    "ood_val": "val",
}
_WILDS_HINT = (
    "The WILDS archives come from https://wilds.stanford.edu/datasets/ (or "
    "`wilds.get_dataset(..., download=True)`); set presets.<benchmark>.data.<download> "
    "in params.yaml to a placed archive or to the extracted folder."
)


def _check_release(root: Path, release: str) -> None:
    """WILDS marks each version with a RELEASE file; warn (not fail) when it is missing."""
    if not (root / release).is_file():
        print(
            f"warning: {root} has no {release}; reading it as that WILDS release", file=sys.stderr
        )


def check_iwildcam_categories(path: Path) -> None:
    """categories.csv must list our 182 classes: label y = 0..181, ``name`` (lowercased) as in
    IWILDCAM_CATEGORIES; rows with y = 99999 (categories absent from WILDS) are skipped."""
    cats = pd.read_csv(path)
    if not {"y", "name"} <= set(cats.columns):
        raise UserError(f"{path}: expected columns y and name, got {list(cats.columns)}")
    cats = cats[cats["y"] < 99999].sort_values("y")
    if cats["y"].tolist() != list(range(len(IWILDCAM_CATEGORIES))):
        raise UserError(
            f"{path}: expected labels y = 0..{len(IWILDCAM_CATEGORIES) - 1}, "
            f"got {len(cats)} rows (not the WILDS v2.0 release?)"
        )
    names = cats["name"].astype(str).str.strip().str.lower().tolist()
    for y, (name, (_, expected, _)) in enumerate(zip(names, IWILDCAM_CATEGORIES, strict=True)):
        if name != expected:
            raise UserError(
                f"{path}: label {y} is {name!r}, expected {expected!r} "
                "(not the WILDS v2.0 release?)"
            )


def prepare_iwildcam(out_dir: Path, *, raw_dir: str = "data/raw") -> None:
    """Tables of iWildCam (WILDS v2.0) from the unpacked ``iwildcam_v2.0/`` (metadata.csv,
    categories.csv, train/) in ``raw_dir/iwildcam``."""
    out_dir = Path(out_dir)
    root = locate(Path(raw_dir) / "iwildcam", IWILDCAM_MARKERS, "iwildcam", _WILDS_HINT)
    _check_release(root, "RELEASE_v2.0.txt")
    check_iwildcam_categories(root / "categories.csv")
    meta = pd.read_csv(root / "metadata.csv")
    missing = {"split", "filename", "y"} - set(meta.columns)
    if missing:
        raise UserError(f"{root / 'metadata.csv'}: missing columns {sorted(missing)}")
    unknown = set(meta["split"]) - set(IWILDCAM_SPLITS.values())
    if unknown:
        raise UserError(f"{root / 'metadata.csv'}: unknown splits {sorted(unknown)}")
    if not meta["y"].between(0, len(IWILDCAM_CLASSNAMES) - 1).all():
        raise UserError(f"{root / 'metadata.csv'}: labels y outside 0..181")
    images = image_path(root / "train", out_dir)
    sizes = {}
    for table, split in IWILDCAM_SPLITS.items():
        rows = meta[meta["split"] == split]
        check_exist([root / "train" / f for f in rows["filename"]], f"iwildcam {split}")
        df = pd.DataFrame(
            {
                "image_id": (rows["image_id"] if "image_id" in rows else rows["filename"]).astype(
                    str
                ),
                "label": rows["y"].astype("int64"),
                "path": [f"{images}/{f}" for f in rows["filename"]],
            }
        )
        if "location_remapped" in rows:
            df["location"] = rows["location_remapped"].astype("int64").to_numpy()
        write_table(df, out_dir / f"{table}.parquet")
        sizes[table] = len(df)
    write_split_record(
        out_dir,
        {
            "benchmark": "iwildcam",
            "split": "WILDS v2.0 official",
            "wilds_split": IWILDCAM_SPLITS,
            "sizes": sizes,
        },
    )


@register_benchmark("iwildcam")
def iwildcam_benchmark() -> Benchmark:
    return Benchmark(
        name="iwildcam",
        classnames=list(IWILDCAM_CLASSNAMES),
        templates=list(IWILDCAM_TEMPLATES),
        eval_sets=[
            EvalSet(
                "id_test",
                ood=False,
                metric="macro_f1",
                description="WILDS id_test: camera traps seen in training",
            ),
            EvalSet(
                "ood_test",
                ood=True,
                metric="macro_f1",
                description="WILDS test: camera traps never seen in training",
            ),
        ],
        prepare=prepare_iwildcam,
        extra_tables=["ood_val"],
        downloads=[Download("iwildcam", IWILDCAM_URL, manual=_WILDS_HINT)],
        description="iWildCam (WILDS v2.0): animal species in camera-trap photos, 182 classes",
    )


# ----------------------------------------------------------------------------------------------
# FMoW

# Label order of WILDS (fmow_dataset.categories). The prompts keep the underscores, as the
# reference code did (except in the two templates that pick an article, see below).
FMOW_CATEGORIES = [
    "airport",
    "airport_hangar",
    "airport_terminal",
    "amusement_park",
    "aquaculture",
    "archaeological_site",
    "barn",
    "border_checkpoint",
    "burial_site",
    "car_dealership",
    "construction_site",
    "crop_field",
    "dam",
    "debris_or_rubble",
    "educational_institution",
    "electric_substation",
    "factory_or_powerplant",
    "fire_station",
    "flooded_road",
    "fountain",
    "gas_station",
    "golf_course",
    "ground_transportation_station",
    "helipad",
    "hospital",
    "impoverished_settlement",
    "interchange",
    "lake_or_pond",
    "lighthouse",
    "military_facility",
    "multi-unit_residential",
    "nuclear_powerplant",
    "office_building",
    "oil_or_gas_facility",
    "park",
    "parking_lot_or_garage",
    "place_of_worship",
    "police_station",
    "port",
    "prison",
    "race_track",
    "railway_bridge",
    "recreational_facility",
    "road_bridge",
    "runway",
    "shipyard",
    "shopping_mall",
    "single-unit_residential",
    "smokestack",
    "solar_farm",
    "space_facility",
    "stadium",
    "storage_tank",
    "surface_mine",
    "swimming_pool",
    "toll_booth",
    "tower",
    "tunnel_opening",
    "waste_disposal",
    "water_treatment_facility",
    "wind_farm",
    "zoo",
]


class ArticleTemplate(str):
    """A template whose ``format`` fills in the class name as the reference's
    ``append_proper_article`` does: underscores as spaces, after "an" when the name starts with a
    vowel letter and "a" otherwise ("satellite photo of an airport hangar."). It stays a format
    string, so every consumer (open_clip's zero-shot head, the FLYP captions) renders it by
    calling ``format``."""

    __slots__ = ()

    def format(self, name, /):
        name = name.replace("_", " ")
        return super().format(("an " if name.startswith(tuple("aeiou")) else "a ") + name)


# The 16 satellite/aerial templates of the reference code (src/templates/fmow_template.py): the
# third and fourth pick the article and write underscores as spaces; the others take the name as
# it is.
FMOW_TEMPLATES = [
    "satellite photo of a {}.",
    "aerial photo of a {}.",
    ArticleTemplate("satellite photo of {}."),
    ArticleTemplate("aerial photo of {}."),
    "satellite photo of a {} in asia.",
    "aerial photo of a {} in asia.",
    "satellite photo of a {} in africa.",
    "aerial photo of a {} in africa.",
    "satellite photo of a {} in the americas.",
    "aerial photo of a {} in the americas.",
    "satellite photo of a {} in europe.",
    "aerial photo of a {} in europe.",
    "satellite photo of a {} in oceania.",
    "aerial photo of a {} in oceania.",
    "a photo of a {}.",
    "{}.",
]
FMOW_MARKERS = ("rgb_metadata.csv", "country_code_mapping.csv", "images")
FMOW_URL = (
    "https://worksheets.codalab.org/rest/bundles/0xaec91eb7c9d548ebb15e1b5e60f966ab/contents/blob/"
)
FMOW_OOD_YEAR = 2016  # WILDS "official" = "time_after_2016"; OOD validation: the 3 years before
# WILDS (wilds/datasets/fmow_dataset.py, FMoWDataset.__init__ and eval) maps each country code
# with a dict built from country_code_mapping.csv read by pandas, whose empty region cells are
# NaN: a code the mapping lacks is "Other", which worst-region accuracy leaves out, and a country
# whose region is empty is NaN, a region of its own (its results name it "nan", as in
# acc_region:nan) that worst-region accuracy scores like the others.
OTHER_REGION = "Other"
NO_REGION = "nan"


def fmow_tables(meta: pd.DataFrame, ood_year: int = FMOW_OOD_YEAR) -> pd.Series:
    """The table of each metadata row (None: in no split), as WILDS defines its splits: images
    from ``ood_year`` on are OOD test, the three years before OOD validation, the rest ID; each
    takes its rows from the ``split`` column (train, val, test; "seq" is sequestered)."""
    when = pd.to_datetime(meta["timestamp"], utc=True, format="ISO8601")
    test_ood = (when >= pd.Timestamp(f"{ood_year}-01-01", tz="UTC")).to_numpy()
    val_ood = (when >= pd.Timestamp(f"{ood_year - 3}-01-01", tz="UTC")).to_numpy() & ~test_ood
    ood = test_ood | val_ood
    split = meta["split"].to_numpy()
    table = np.full(len(meta), None, dtype=object)
    table[(split == "train") & ~ood] = "train"
    table[(split == "val") & ~ood] = "val"  # WILDS id_val
    table[(split == "test") & ~ood] = "id_test"
    table[(split == "val") & val_ood] = "ood_val"
    table[(split == "test") & test_ood] = "ood_test"  # WILDS test
    return pd.Series(table, index=meta.index, dtype=object)


def fmow_regions(country_codes: pd.Series, mapping: pd.DataFrame) -> pd.Series:
    """Region of each image from its country code (``alpha-3`` -> ``region`` of
    country_code_mapping.csv), as WILDS maps it: codes the mapping lacks are "Other" (not scored
    by worst-region accuracy); countries it gives no region are in region "nan" (scored)."""
    if not {"alpha-3", "region"} <= set(mapping.columns):
        raise UserError(
            "country_code_mapping.csv: expected columns alpha-3 and region, got "
            f"{list(mapping.columns)}"
        )
    regions = mapping["region"].astype(object).where(mapping["region"].notna(), NO_REGION)
    lookup = dict(zip(mapping["alpha-3"], regions, strict=True))
    return country_codes.map(lambda code: lookup.get(code, OTHER_REGION))


def prepare_fmow(out_dir: Path, *, raw_dir: str = "data/raw") -> None:
    """Tables of FMoW (WILDS v1.1) from the unpacked ``fmow_v1.1/`` (rgb_metadata.csv,
    country_code_mapping.csv, images/rgb_img_<row>.png) in ``raw_dir/fmow``."""
    out_dir = Path(out_dir)
    root = locate(Path(raw_dir) / "fmow", FMOW_MARKERS, "fmow", _WILDS_HINT)
    _check_release(root, "RELEASE_v1.1.txt")
    meta = pd.read_csv(root / "rgb_metadata.csv")
    missing = {"split", "timestamp", "country_code", "category"} - set(meta.columns)
    if missing:
        raise UserError(f"{root / 'rgb_metadata.csv'}: missing columns {sorted(missing)}")
    index = {c: i for i, c in enumerate(FMOW_CATEGORIES)}
    unknown = set(meta["category"]) - set(index)
    if unknown:
        raise UserError(f"{root / 'rgb_metadata.csv'}: unknown categories {sorted(unknown)[:5]}")
    meta = meta.assign(
        row=np.arange(len(meta)),  # images/rgb_img_<row>.png, sequestered rows included
        table=fmow_tables(meta),
        region=fmow_regions(meta["country_code"], pd.read_csv(root / "country_code_mapping.csv")),
        year=pd.to_datetime(meta["timestamp"], utc=True, format="ISO8601").dt.year,
    )
    images = image_path(root / "images", out_dir)
    sizes = {}
    for table in ["train", "val", "id_test", "ood_test", "ood_val"]:
        rows = meta[meta["table"] == table]
        check_exist([root / "images" / f"rgb_img_{r}.png" for r in rows["row"]], f"fmow {table}")
        df = pd.DataFrame(
            {
                "image_id": [f"rgb_img_{r}" for r in rows["row"]],
                "label": rows["category"].map(index).astype("int64").to_numpy(),
                "path": [f"{images}/rgb_img_{r}.png" for r in rows["row"]],
                "region": rows["region"].to_numpy(),
                "year": rows["year"].astype("int64").to_numpy(),
            }
        )
        write_table(df, out_dir / f"{table}.parquet")
        sizes[table] = len(df)
    write_split_record(
        out_dir,
        {
            "benchmark": "fmow",
            "split": f"WILDS v1.1 official (time_after_{FMOW_OOD_YEAR})",
            "wilds_split": {
                "train": "train",
                "val": "id_val",
                "id_test": "id_test",
                "ood_test": "test",
                "ood_val": "val",
            },
            "sizes": sizes,
        },
    )


@register_benchmark("fmow")
def fmow_benchmark() -> Benchmark:
    return Benchmark(
        name="fmow",
        classnames=list(FMOW_CATEGORIES),
        templates=list(FMOW_TEMPLATES),
        eval_sets=[
            EvalSet(
                "id_test",
                ood=False,
                metric="accuracy",
                description="WILDS id_test: images from before 2013",
            ),
            EvalSet(
                "ood_test",
                ood=True,
                metric="worst_region_accuracy",
                description="WILDS test: images from 2016 on",
            ),
        ],
        prepare=prepare_fmow,
        extra_tables=["ood_val"],
        downloads=[Download("fmow", FMOW_URL, manual=_WILDS_HINT)],
        description="FMoW (WILDS v1.1): land use in satellite images, 62 classes",
    )
