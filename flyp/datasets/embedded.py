"""The embedded benchmark: a procedurally drawn world of objects, made offline in seconds.

It mirrors the structure of CLIP on ImageNet. A *pretraining set* of captioned images spans many
visual styles (photo-like, sketch, cartoon, painting, pixel art) with noisy, varied captions, like
web data. The *ID set* is one style (photo-like) with train/val/test splits, like ImageNet. Five
*OOD sets* each imitate one ImageNet shift:

========== ================================================================================
v2         same style as ID, re-drawn with shifted attribute frequencies (ImageNetV2)
sketch     grey pencil outlines on paper (ImageNet-Sketch)
r          renditions: cartoon, painting and pixel-art styles (ImageNet-R)
a          hard photos: clutter, occluders, small objects, noise (ImageNet-A)
objectnet  new backgrounds, any rotation, off-centre and squashed objects (ObjectNet)
========== ================================================================================

Every image is a function of ``(seed, table, index)``: the same seed gives byte-identical tables on
any machine and any number of worker processes.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from flyp.datasets import Benchmark, EvalSet, register_benchmark
from flyp.datasets.parquet import write_table
from flyp.io import UserError

CLASSNAMES = [
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "ring",
    "arrow",
    "crescent",
    "hexagon",
    "house",
    "lightning bolt",
]

# Evaluation (and FLYP caption) templates, in the spirit of OpenAI's ImageNet templates: generic
# wordings, never the attribute-rich captions of the pretraining set.
TEMPLATES = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a drawing of a {}.",
    "a sketch of a {}.",
    "a painting of a {}.",
    "a cartoon {}.",
    "a rendering of a {}.",
    "a small {}.",
    "a large {}.",
    "a {} shape.",
]

# Words the pretraining captions use for a class besides its name (web captions are not canonical).
SYNONYMS = {
    "circle": ["disc", "round dot"],
    "square": ["box", "block"],
    "triangle": ["wedge"],
    "star": ["star shape"],
    "cross": ["plus sign"],
    "heart": ["love heart"],
    "ring": ["hoop", "donut"],
    "arrow": ["pointer"],
    "crescent": ["moon"],
    "hexagon": ["honeycomb cell"],
    "house": ["hut", "home"],
    "lightning bolt": ["zigzag", "bolt"],
}

COLORS = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 210, 40),
    "purple": (130, 50, 170),
    "orange": (240, 130, 30),
    "pink": (240, 120, 180),
    "brown": (120, 75, 35),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
}
COLOR_NAMES = list(COLORS)

STYLES = ["photo", "sketch", "cartoon", "painting", "pixel"]
STYLE_WORDS = {
    "photo": ["photo", "snapshot", "picture"],
    "sketch": ["sketch", "pencil drawing"],
    "cartoon": ["cartoon", "clip art"],
    "painting": ["painting", "oil painting"],
    "pixel": ["pixel art", "mosaic"],
}
BACKGROUNDS = ["plain", "gradient", "texture", "stripes", "checker"]
SIZES = {"tiny": (0.22, 0.32), "small": (0.35, 0.5), "medium": (0.5, 0.68), "large": (0.68, 0.85)}


@dataclass(frozen=True)
class Distribution:
    """How a table's images are drawn: probabilities over styles and attributes."""

    styles: dict[str, float]
    colors: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COLOR_NAMES, 1.0))
    sizes: dict[str, float] = field(
        default_factory=lambda: {"small": 1.0, "medium": 1.0, "large": 1.0}
    )
    backgrounds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BACKGROUNDS, 1.0))
    max_rotation: float = 20.0  # degrees, uniform in [-max, max] ...
    rotated: float = 0.2  # ... except this fraction, turned any way (photos are mostly upright)
    center_jitter: float = 0.15  # fraction of the image
    squash: float = 0.0  # max anisotropic scale change (viewpoint)
    clutter: float = 0.1  # probability of distractor strokes
    occlusion: float = 0.05  # probability of an occluding bar
    noise: float = 0.04  # pixel noise std (0..1 scale)


# Photo-like ID world: upright objects on everyday backgrounds, colour frequencies skewed.
_ID_COLORS = {
    "red": 3,
    "green": 2,
    "blue": 3,
    "yellow": 2,
    "purple": 1,
    "orange": 1,
    "pink": 1,
    "brown": 1,
    "white": 1,
    "black": 1,
}
ID_WORLD = Distribution(
    styles={"photo": 1.0},
    colors=_ID_COLORS,
    sizes={"small": 1, "medium": 2, "large": 3},
    backgrounds={"plain": 1, "gradient": 1, "texture": 1},
    rotated=0.0,
    clutter=0.1,
    occlusion=0.0,
    noise=0.03,
)
DISTRIBUTIONS = {
    # Web-like pretraining data: every style, every attribute, any pose.
    "pretrain": Distribution(
        styles={"photo": 0.4, "sketch": 0.15, "cartoon": 0.2, "painting": 0.15, "pixel": 0.1},
        clutter=0.05,
        rotated=0.1,
    ),
    "train": ID_WORLD,
    "val": ID_WORLD,
    "test": ID_WORLD,
    "v2": replace(
        ID_WORLD,
        colors={
            "red": 1,
            "green": 2,
            "blue": 1,
            "yellow": 1,
            "purple": 2,
            "orange": 2,
            "pink": 2,
            "brown": 2,
            "white": 1,
            "black": 1,
        },
        sizes={"small": 2, "medium": 2, "large": 1},
        noise=0.06,
    ),
    "sketch": replace(ID_WORLD, styles={"sketch": 1.0}),
    "r": replace(ID_WORLD, styles={"cartoon": 1.0, "painting": 1.0, "pixel": 1.0}, max_rotation=45),
    "a": replace(
        ID_WORLD,
        sizes={"small": 2, "medium": 1},
        clutter=0.8,
        occlusion=0.3,
        backgrounds={"texture": 2, "gradient": 1},
        noise=0.05,
    ),
    "objectnet": replace(
        ID_WORLD,
        backgrounds={"stripes": 1, "checker": 1},
        rotated=0.5,
        center_jitter=0.2,
        squash=0.25,
    ),
}
PRETRAIN_SKETCHES = DISTRIBUTIONS["pretrain"].styles["sketch"]


def pretrain_distribution(sketches: float = PRETRAIN_SKETCHES) -> Distribution:
    """The pretraining distribution with ``sketches`` of its images drawn as sketches (the
    rarer sketches are on the web, the further ImageNet-Sketch lies from pretraining)."""
    if not 0 <= sketches < 1:
        raise UserError(
            f"data option pretrain_sketches: expected a fraction in [0, 1), got {sketches}"
        )
    base = DISTRIBUTIONS["pretrain"]
    if sketches == PRETRAIN_SKETCHES:  # the same weights, so the same draws as before the option
        return base
    others = {k: w for k, w in base.styles.items() if k != "sketch"}
    scale = (1 - sketches) / sum(others.values())
    return replace(base, styles={**{k: w * scale for k, w in others.items()}, "sketch": sketches})


EVAL_SETS = [
    EvalSet("test", ood=False, description="ID test: photo-like, same distribution as train"),
    EvalSet(
        "v2", ood=True, description="re-drawn ID with shifted attribute frequencies (ImageNetV2)"
    ),
    EvalSet("sketch", ood=True, description="pencil sketches (ImageNet-Sketch)"),
    EvalSet("r", ood=True, description="cartoon, painting and pixel-art renditions (ImageNet-R)"),
    EvalSet("a", ood=True, description="clutter, occlusion, small objects and noise (ImageNet-A)"),
    EvalSet("objectnet", ood=True, description="new backgrounds, poses, viewpoints (ObjectNet)"),
]
# Table name -> stable id used in the random seed (never reorder).
_TABLE_IDS = {
    name: i
    for i, name in enumerate(
        ["pretrain", "train", "val", "test", "v2", "sketch", "r", "a", "objectnet"]
    )
}


# ----------------------------------------------------------------------------------------------
# Shapes: polygons in unit coordinates (object radius about 1), y pointing down.


def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [
        (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> list[tuple[float, float]]:
    pts = []
    for k in range(40):
        t = 2 * math.pi * k / 40
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17, -y / 17 + 0.1))
    return pts


_POLYGONS = {
    "square": [[(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]],
    "triangle": [_regular(3, 1.0, -math.pi / 2)],
    "star": [_star()],
    "cross": [
        [
            (-0.3, -0.95),
            (0.3, -0.95),
            (0.3, -0.3),
            (0.95, -0.3),
            (0.95, 0.3),
            (0.3, 0.3),
            (0.3, 0.95),
            (-0.3, 0.95),
            (-0.3, 0.3),
            (-0.95, 0.3),
            (-0.95, -0.3),
            (-0.3, -0.3),
        ]
    ],
    "heart": [_heart()],
    "arrow": [
        [
            (-0.95, -0.22),
            (0.2, -0.22),
            (0.2, -0.6),
            (0.95, 0.0),
            (0.2, 0.6),
            (0.2, 0.22),
            (-0.95, 0.22),
        ]
    ],
    "hexagon": [_regular(6, 0.95, 0.0)],
    "house": [[(-0.7, 0.85), (-0.7, -0.1), (0.0, -0.9), (0.7, -0.1), (0.7, 0.85)]],
    "lightning bolt": [
        [
            (0.15, -0.95),
            (-0.55, 0.1),
            (-0.05, 0.1),
            (-0.3, 0.95),
            (0.55, -0.2),
            (0.05, -0.2),
            (0.35, -0.95),
        ]
    ],
}


def _transform(points, cx, cy, radius, angle, sx, sy):
    c, s = math.cos(angle), math.sin(angle)
    return [
        (cx + radius * (sx * x * c - sy * y * s), cy + radius * (sx * x * s + sy * y * c))
        for x, y in points
    ]


def draw_mask(
    cls: str,
    size: int,
    cx: float,
    cy: float,
    radius: float,
    angle: float,
    sx: float = 1.0,
    sy: float = 1.0,
) -> Image.Image:
    """Binary mask ("L", 0/255) of one object of class ``cls``."""
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    circle = _regular(48, 0.9)
    if cls == "circle":
        d.polygon(_transform(circle, cx, cy, radius, angle, sx, sy), fill=255)
    elif cls == "ring":
        d.polygon(_transform(_regular(48, 0.95), cx, cy, radius, angle, sx, sy), fill=255)
        d.polygon(_transform(_regular(48, 0.55), cx, cy, radius, angle, sx, sy), fill=0)
    elif cls == "crescent":
        d.polygon(_transform(circle, cx, cy, radius, angle, sx, sy), fill=255)
        bite = [(x * 0.8 + 0.45, y * 0.8 - 0.1) for x, y in circle]
        d.polygon(_transform(bite, cx, cy, radius, angle, sx, sy), fill=0)
    else:
        for poly in _POLYGONS[cls]:
            d.polygon(_transform(poly, cx, cy, radius, angle, sx, sy), fill=255)
    return mask


# ----------------------------------------------------------------------------------------------
# Rendering. Work at twice the output resolution, then downsample (anti-aliasing).


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.asarray([weights[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def _jitter_color(rng, rgb, amount=25):
    return np.clip(np.asarray(rgb, float) + rng.normal(0, amount, 3), 0, 255)


def _random_rgb(rng):
    return rng.uniform(0, 255, 3)


def _background(rng, kind: str, s: int) -> np.ndarray:
    """(s, s, 3) float array in 0..255."""
    yy, xx = np.mgrid[0:s, 0:s].astype(float) / s
    a, b = _random_rgb(rng), _random_rgb(rng)
    if kind == "plain":
        img = np.broadcast_to(a, (s, s, 3)).copy()
    elif kind == "gradient":
        t = math.cos(rng.uniform(0, 2 * math.pi)) * xx + math.sin(rng.uniform(0, 2 * math.pi)) * yy
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == "texture":  # smooth random field: grass, fabric, wood...
        coarse = rng.normal(0, 1, (6, 6))
        field_ = np.asarray(
            Image.fromarray(coarse.astype(np.float32)).resize((s, s), Image.BICUBIC)
        )
        t = (field_ - field_.min()) / (np.ptp(field_) + 1e-6)
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == "stripes":
        period = rng.uniform(0.12, 0.3)
        ang = rng.uniform(0, math.pi)
        t = np.sin(2 * math.pi * (math.cos(ang) * xx + math.sin(ang) * yy) / period) > 0
        img = np.where(t[..., None], a, b)
    elif kind == "checker":
        n = rng.integers(3, 7)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(bool)
        img = np.where(t[..., None], a, b)
    else:
        raise ValueError(kind)
    return img


def _add_clutter(rng, img: np.ndarray, s: int) -> None:
    """Distractor strokes and dots drawn over the background (ImageNet-A-like clutter)."""
    pil = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for _ in range(rng.integers(3, 8)):
        x0, y0, x1, y1 = rng.uniform(0, s, 4)
        d.line(
            [(x0, y0), (x1, y1)],
            fill=tuple(int(v) for v in _random_rgb(rng)),
            width=int(rng.integers(1, 4)),
        )
    for _ in range(rng.integers(2, 6)):
        x, y, r = *rng.uniform(0, s, 2), rng.uniform(1, s * 0.08)
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in _random_rgb(rng)))
    img[...] = np.asarray(pil, dtype=float)


def _edges(mask: np.ndarray, width: int) -> np.ndarray:
    m = Image.fromarray((mask * 255).astype(np.uint8))
    inner = np.asarray(m.filter(ImageFilter.MinFilter(2 * width + 1)), float) / 255
    return np.clip(mask - inner, 0, 1)


@dataclass
class Scene:
    cls: str
    style: str
    color: str
    size: str
    background: str
    rotated: bool
    clutter: bool
    occluded: bool


def render(rng: np.random.Generator, dist: Distribution, label: int, image_size: int):
    """Draw one image of class ``label`` from ``dist``: returns (uint8 HxWx3 array, Scene)."""
    s = 2 * image_size
    cls = CLASSNAMES[label]
    style = _choice(rng, dist.styles)
    color = _choice(rng, dist.colors)
    size = _choice(rng, dist.sizes)
    bg_kind = _choice(rng, dist.backgrounds)
    turn = 180.0 if rng.random() < dist.rotated else dist.max_rotation
    angle_deg = rng.uniform(-turn, turn)
    radius = rng.uniform(*SIZES[size]) * s / 2
    jitter = dist.center_jitter * s
    cx, cy = s / 2 + rng.uniform(-jitter, jitter), s / 2 + rng.uniform(-jitter, jitter)
    sx = sy = 1.0
    if dist.squash > 0:
        sx, sy = 1 - rng.uniform(0, dist.squash), 1 - rng.uniform(0, dist.squash)
    mask = (
        np.asarray(draw_mask(cls, s, cx, cy, radius, math.radians(angle_deg), sx, sy), float)[
            ..., None
        ]
        / 255
    )  # (s, s, 1) in 0..1
    clutter = rng.random() < dist.clutter
    occluded = rng.random() < dist.occlusion
    rgb = _jitter_color(rng, COLORS[color])
    scene = Scene(cls, style, color, size, bg_kind, abs(angle_deg) > 45, clutter, occluded)
    if style not in _PAINTERS:
        raise ValueError(style)
    img = _PAINTERS[style](rng, scene, mask, rgb, s)
    if occluded:
        img = _occlude(rng, img, cx, cy, radius, s)
    img = img + rng.normal(0, dist.noise * 255, img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
        (image_size, image_size), Image.LANCZOS
    )
    return np.asarray(out), scene


# Each style paints the object (``mask`` (s, s, 1), colour ``rgb``) and its background into an
# (s, s, 3) float array in 0..255, drawing from ``rng`` in a fixed order: the same seed, the same
# pixels.


def _paint_photo(rng, scene: Scene, mask: np.ndarray, rgb: np.ndarray, s: int) -> np.ndarray:
    img = _background(rng, scene.background, s)
    if scene.clutter:
        _add_clutter(rng, img, s)
    # Shading: light from a random direction, plus a soft texture on the object.
    yy, xx = np.mgrid[0:s, 0:s].astype(float) / s
    light = rng.uniform(0, 2 * math.pi)
    shade = 0.75 + 0.35 * (math.cos(light) * (xx - 0.5) + math.sin(light) * (yy - 0.5))
    obj = rgb * shade[..., None]
    return img * (1 - mask) + obj * mask


def _paint_pixel(rng, scene: Scene, mask: np.ndarray, rgb: np.ndarray, s: int) -> np.ndarray:
    """A photo in coarse blocks of few colours."""
    img = _paint_photo(rng, scene, mask, rgb, s)
    block = int(rng.integers(3, 5))
    small = (
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        .resize((s // block, s // block), Image.BILINEAR)
        .quantize(int(rng.integers(4, 9)))
    )
    return np.asarray(small.convert("RGB").resize((s, s), Image.NEAREST), float)


def _paint_sketch(rng, scene: Scene, mask: np.ndarray, rgb: np.ndarray, s: int) -> np.ndarray:
    paper = rng.uniform(215, 250)
    img = np.full((s, s, 3), paper) + rng.normal(0, 4, (s, s, 1))
    ink = rng.uniform(20, 90)
    strength = rng.uniform(0.6, 1.0)
    edge = _edges(mask[..., 0], int(rng.integers(1, 3)))
    # A second, slightly shifted stroke: hand-drawn lines rarely close exactly.
    shift = rng.integers(-1, 2, 2)
    edge = np.maximum(edge, 0.6 * np.roll(edge, tuple(shift), axis=(0, 1)))
    if rng.random() < 0.5:  # hatching inside the object
        yy, xx = np.mgrid[0:s, 0:s]
        hatch = ((xx + yy) % int(rng.integers(4, 7)) == 0).astype(float)
        edge = np.maximum(edge, 0.5 * hatch * mask[..., 0])
    if scene.clutter:
        strokes = np.zeros((s, s, 3))
        _add_clutter(rng, strokes, s)
        edge = np.maximum(edge, 0.5 * (strokes.mean(-1) > 0))
    return img * (1 - strength * edge[..., None]) + ink * strength * edge[..., None]


def _paint_cartoon(rng, scene: Scene, mask: np.ndarray, rgb: np.ndarray, s: int) -> np.ndarray:
    img = np.broadcast_to(_random_rgb(rng), (s, s, 3)).copy()
    if scene.clutter:
        _add_clutter(rng, img, s)
    flat = np.clip(np.asarray(COLORS[scene.color], float) * 1.1, 0, 255)
    img = img * (1 - mask) + flat * mask
    edge = _edges(mask[..., 0], int(rng.integers(2, 4)))[..., None]
    return img * (1 - edge)


def _paint_painting(rng, scene: Scene, mask: np.ndarray, rgb: np.ndarray, s: int) -> np.ndarray:
    img = _background(rng, "texture", s)
    for _ in range(int(rng.integers(4, 9))):  # colour blobs
        x, y, r = *rng.uniform(0, s, 2), rng.uniform(s * 0.1, s * 0.3)
        yy, xx = np.mgrid[0:s, 0:s]
        blob = (((xx - x) ** 2 + (yy - y) ** 2) < r * r)[..., None]
        img = np.where(blob, 0.5 * img + 0.5 * _random_rgb(rng), img)
    if scene.clutter:
        _add_clutter(rng, img, s)
    brush = rng.normal(0, 30, (s // 4, s // 4, 3))
    brush = (
        np.asarray(
            Image.fromarray(np.clip(brush + 128, 0, 255).astype(np.uint8)).resize(
                (s, s), Image.BICUBIC
            ),
            float,
        )
        - 128
    )
    img = img * (1 - mask) + (rgb + brush) * mask
    return np.asarray(
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(rng.uniform(0.8, 1.6))
        ),
        float,
    )


_PAINTERS = {
    "photo": _paint_photo,
    "pixel": _paint_pixel,
    "sketch": _paint_sketch,
    "cartoon": _paint_cartoon,
    "painting": _paint_painting,
}


def _occlude(rng, img: np.ndarray, cx: float, cy: float, radius: float, s: int) -> np.ndarray:
    """A bar across part of the object (centred at (cx, cy), of radius ``radius``)."""
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    w = rng.uniform(0.4, 0.8) * radius  # hides part of the object, rarely all of it
    if rng.random() < 0.5:
        x = cx + rng.uniform(-0.5, 0.5) * radius
        d.rectangle([x - w / 2, 0, x + w / 2, s], fill=tuple(int(v) for v in _random_rgb(rng)))
    else:
        y = cy + rng.uniform(-0.5, 0.5) * radius
        d.rectangle([0, y - w / 2, s, y + w / 2], fill=tuple(int(v) for v in _random_rgb(rng)))
    return np.asarray(pil, float)


# ----------------------------------------------------------------------------------------------
# Captions of the pretraining set: attribute-rich, varied, sometimes noisy (like alt-text).

_CAPTION_FORMS = [
    "a {style} of a {color} {cls}",
    "a {style} of a {cls}",
    "a {size} {color} {cls}",
    "a {size} {cls}",
    "{color} {cls} on a {bg} background",
    "a {cls} on a {bg} background",
    "a {cls} in {style} style",
    "{style} of a {cls}",
    "a {color} {cls}, {style}",
    "my {cls} {style}",
    "the {cls} is {color}",
    "a {cls}",
]
MISLABELLED = 0.03  # captions that name the wrong object
SYNONYMOUS = 0.1  # captions that name the object by a synonym
UNNAMED = 0.06  # captions that name no object
# Pairs of classes whose names web text mixes up (ImageNet's "crane", "maillot"): with the data
# option ``confusable`` (default 0), that share of the captions that would name the object by its
# class name names its partner instead; its synonyms stay its own.
PARTNERS = {
    a: b
    for x, y in [
        ("circle", "ring"),
        ("square", "hexagon"),
        ("triangle", "arrow"),
        ("star", "cross"),
        ("heart", "house"),
        ("crescent", "lightning bolt"),
    ]
    for a, b in ((x, y), (y, x))
}


@dataclass(frozen=True)
class CaptionNoise:
    """How often a pretraining caption names another object, a synonym, or no object, and how
    often a class name is its partner's (``PARTNERS``)."""

    mislabelled: float = MISLABELLED
    synonymous: float = SYNONYMOUS
    unnamed: float = UNNAMED
    confusable: float = 0.0

    def __post_init__(self):
        for name, value in vars(self).items():
            if not 0 <= value <= 1:
                raise UserError(f"data option {name}: expected a fraction in [0, 1], got {value}")
        if self.mislabelled + self.synonymous > 1:
            raise UserError(
                f"data options mislabelled + synonymous: expected at most 1, got "
                f"{self.mislabelled + self.synonymous:g}"
            )


_BG_WORDS = {
    "plain": "plain",
    "gradient": "smooth",
    "texture": "textured",
    "stripes": "striped",
    "checker": "checkered",
}


def caption(rng: np.random.Generator, scene: Scene, noise: CaptionNoise = CaptionNoise()) -> str:
    draw = rng.random()
    if draw < noise.mislabelled:  # alt-text that names another object
        cls = str(rng.choice([c for c in CLASSNAMES if c != scene.cls]))
    elif draw < noise.mislabelled + noise.synonymous:
        cls = str(rng.choice(SYNONYMS[scene.cls]))
    else:
        cls = scene.cls
        # no draw at confusable 0: the committed world's random stream and tables stay as they were
        if noise.confusable and rng.random() < noise.confusable:
            cls = PARTNERS[cls]
    color = "grey" if scene.style == "sketch" else scene.color  # sketches have no colour
    words = dict(
        cls=cls,
        color=color,
        size=scene.size,
        style=str(rng.choice(STYLE_WORDS[scene.style])),
        bg=_BG_WORDS[scene.background],
    )
    if rng.random() < noise.unnamed:  # alt-text that never names the object
        return f"a {words['style']} with {color} colors"
    text = str(rng.choice(_CAPTION_FORMS)).format(**words)
    if scene.rotated and rng.random() < 0.5:
        text += " turned sideways"
    if scene.clutter and rng.random() < 0.5:
        text += " among clutter"
    return text


# ----------------------------------------------------------------------------------------------
# Tables.


def _encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


_CHUNK = 500


def _make_chunk(args) -> list[dict]:
    seed, table, start, stop, image_size, noise, dist = args
    rows = []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, _TABLE_IDS[table], i])
        label = int(rng.integers(len(CLASSNAMES)))
        arr, scene = render(rng, dist, label, image_size)
        row = {
            "image_id": f"{table}-{i:06d}",
            "label": label,
            "image": _encode_png(arr),
            "style": scene.style,
        }
        if table == "pretrain":
            row["caption"] = caption(rng, scene, noise)
        rows.append(row)
    return rows


def make_table(
    table: str,
    n: int,
    seed: int,
    image_size: int = 32,
    workers: int = 1,
    chunk: int = _CHUNK,
    noise: CaptionNoise = CaptionNoise(),
    dist: Distribution | None = None,
):
    """Draw ``n`` images of ``table`` (a key of DISTRIBUTIONS) as a DataFrame; ``dist``, if
    given, instead of the table's distribution."""
    dist = dist or DISTRIBUTIONS[table]
    jobs = [
        (seed, table, a, min(a + chunk, n), image_size, noise, dist) for a in range(0, n, chunk)
    ]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            chunks = list(pool.map(_make_chunk, jobs))
    else:
        chunks = [_make_chunk(j) for j in jobs]
    return pd.DataFrame([r for c in chunks for r in c])


def prepare(
    out_dir: Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    pretrain_size: int = 20000,
    train_size: int = 4000,
    val_size: int = 1000,
    test_size: int = 2000,
    ood_size: int = 1000,
    workers: int = 1,
    mislabelled: float = MISLABELLED,
    synonymous: float = SYNONYMOUS,
    unnamed: float = UNNAMED,
    confusable: float = 0.0,
    pretrain_sketches: float = PRETRAIN_SKETCHES,
) -> None:
    """Write every table of the embedded benchmark into ``out_dir``. ``mislabelled``,
    ``synonymous`` and ``unnamed``: the fractions of pretraining captions that name another
    object, a synonym, or no object; ``confusable``: of those that name it by its class name, the
    share that names its partner class (``PARTNERS``) instead; ``pretrain_sketches``: the share
    of pretraining images drawn as sketches (the other styles keep their proportions)."""
    noise = CaptionNoise(mislabelled, synonymous, unnamed, confusable)  # checks the fractions
    dists = dict(DISTRIBUTIONS, pretrain=pretrain_distribution(pretrain_sketches))
    sizes = {"pretrain": pretrain_size, "train": train_size, "val": val_size, "test": test_size}
    sizes.update({s.name: ood_size for s in EVAL_SETS if s.ood})
    for table, n in sizes.items():
        df = make_table(table, n, seed, image_size, workers, noise=noise, dist=dists[table])
        df.attrs["description"] = dists[table].__repr__()
        write_table(df, Path(out_dir) / f"{table}.parquet")


@register_benchmark("embedded")
def embedded_benchmark() -> Benchmark:
    return Benchmark(
        name="embedded",
        classnames=list(CLASSNAMES),
        templates=list(TEMPLATES),
        eval_sets=list(EVAL_SETS),
        prepare=prepare,
        extra_tables=["pretrain"],
        description=__doc__.split("\n\n")[0],
    )
