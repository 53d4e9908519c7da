"""Weight ensembling, WiSE-FT (Wortsman et al., CVPR 2022).

``theta(a) = (1 - a) * theta_zeroshot + a * theta_finetuned`` over every weight (head included),
for a grid of ``a``; a = 0 is the zero-shot model and a = 1 the finetuned one. For methods whose
head is built from the text tower (FLYP and its ablations), the CLIP weights are interpolated and
the head is rebuilt from the interpolated text tower, as FLYP evaluates any CLIP. ``a`` is
picked on ID-val with the benchmark's own ID metric (macro-F1 for iWildCam), never on test.
"""

from __future__ import annotations

import csv
import io

import torch

from flyp.io import UserError
from flyp.models import (
    Checkpoint,
    ImageClassifier,
    build_zero_shot_head,
    checkpoint_layout,
    clip_from_checkpoint,
    get_tokenizer,
    head_from_state,
    normalizes_features,
    shape_mismatch,
)


def interpolate_state(zs: dict, ft: dict, a: float) -> dict:
    """Floating-point tensors mixed; integer buffers (e.g. BatchNorm's step count) from ``ft``.
    Written as (1 - a) * zs + a * ft so that a = 0 and a = 1 give exactly zs and ft."""
    if zs.keys() != ft.keys():
        raise ValueError("checkpoints have different weights; not the same architecture")
    return {
        k: ((1 - a) * zs[k] + a * ft[k]) if ft[k].is_floating_point() else ft[k].clone() for k in ft
    }


def check_ensemble_pair(zeroshot_path, finetuned_path) -> None:
    """Refuse, from the two files' headers and before any evaluation, a pair that cannot be mixed:
    other architectures, other tensor shapes, or (for a finetuned head that is not rebuilt from
    the text tower) a zero-shot checkpoint without a head of the same shape."""
    (zs_meta, zs_shapes), (ft_meta, ft_shapes) = (
        checkpoint_layout(zeroshot_path),
        checkpoint_layout(finetuned_path),
    )
    where = f"--ensemble-with {zeroshot_path}"
    if zs_meta["model_name"] != ft_meta["model_name"]:
        raise UserError(
            f"{where}: a {zs_meta['model_name']!r} checkpoint, but {finetuned_path} "
            f"is {ft_meta['model_name']!r}; weight ensembling needs the same "
            f"architecture (the zero-shot checkpoint of the same pretrained model)"
        )
    parts = ["clip."] if ft_meta["info"].get("head_from_text") else ["clip.", "head."]
    for prefix in parts:
        mismatch = shape_mismatch(
            {k: v for k, v in ft_shapes.items() if k.startswith(prefix)},
            {k: v for k, v in zs_shapes.items() if k.startswith(prefix)},
        )
        if mismatch:
            raise UserError(
                f"{where}: its tensors do not fit those of {finetuned_path}: {mismatch}"
            )


def head_from_text(ckpt: Checkpoint) -> bool:
    return bool(ckpt.info.get("head_from_text"))


def interpolated_classifier(
    zs: Checkpoint, ft: Checkpoint, a: float, classnames, templates, device="cpu"
) -> ImageClassifier:
    if zs.model_name != ft.model_name:
        raise ValueError(f"cannot ensemble {zs.model_name} with {ft.model_name}")
    clip = clip_from_checkpoint(ft)  # the architecture and its preprocessing config
    clip.load_state_dict(interpolate_state(zs.clip, ft.clip, a))
    clip = clip.to(device)
    if head_from_text(ft):
        head = build_zero_shot_head(clip, get_tokenizer(ft.model_name), classnames, templates)
    elif normalizes_features(zs.info) != normalizes_features(ft.info):
        heads = [head_from_state(h).to(device) for h in (zs.head, ft.head)]
        flags = [normalizes_features(c.info) for c in (zs, ft)]
        return ImageClassifier(clip, MixedHead(*heads, *flags, a), normalize=False).eval()
    else:
        head = head_from_state(interpolate_state(zs.head, ft.head, a)).to(device)
    return ImageClassifier(clip, head, normalizes_features(ft.info)).eval()


class MixedHead(torch.nn.Module):
    """``(1 - a) * zs_head(x) + a * ft_head(x)`` on raw image features, each head given them
    L2-normalised or not as it was fitted: the mix of two heads that read features on different
    scales (the zero-shot head normalised ones, a probe fitted on raw ones). With both on the same
    features it is the interpolated head itself (a linear map), so alpha 0 and 1 are exactly the
    two models."""

    def __init__(self, zs_head, ft_head, zs_normalize: bool, ft_normalize: bool, a: float):
        super().__init__()
        self.zs_head, self.ft_head, self.a = zs_head, ft_head, a
        self.zs_normalize, self.ft_normalize = zs_normalize, ft_normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(x, dim=-1)
        zs = self.zs_head(unit if self.zs_normalize else x)
        ft = self.ft_head(unit if self.ft_normalize else x)
        return (1 - self.a) * zs + self.a * ft


# Weights of mixed models held at once while a pass runs (the alpha grid is split into groups
# under it; each group is one pass over every eval set). ViT-B/16 is 0.56 GiB in fp32: 10 mixed
# models (alphas 0 to 0.9) fit in one pass.
ENSEMBLE_BYTES = 8 << 30


def models_per_pass(zs: Checkpoint, budget: int = ENSEMBLE_BYTES) -> int:
    """How many mixed models fit in ``budget`` bytes of weights (at least one)."""
    tensors = [*zs.clip.values(), *(zs.head or {}).values()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    return max(1, budget // max(1, size))


def ensemble_curve(
    zs: Checkpoint,
    ft: Checkpoint,
    alphas,
    bench,
    data_dir,
    *,
    val_set,
    known: dict | None = None,
    device="cpu",
    batch_size: int = 256,
    num_workers: int = 0,
    precision: str = "fp32",
    budget: int = ENSEMBLE_BYTES,
    eval_cache=None,
    log=print,
) -> list[dict]:
    """One row per alpha: {"alpha", "val_metric", "val_score", "val_loss", <eval set>...,
    "avg_ood"}; the val score is the benchmark's ID metric on ``val_set``. ``known`` maps an alpha
    to an already computed row (a = 0 and a = 1 are the zero-shot and finetuned results).

    The other alphas are evaluated together: their mixed models are built once and every batch of
    ID-val and of each eval set is decoded once and seen by all of them (``budget``: bytes of
    mixed weights held at once; the grid is split into passes beyond it). Each alpha's logits are
    those it would get evaluated alone. ``eval_cache``: the eval sets' images come from this
    ``flyp evalcache`` folder (``val_set`` is the caller's)."""
    known = known or {}
    # The same weights and head on both ends (zero-shot with itself): nothing to mix.
    if same_tensors(zs.clip, ft.clip) and same_tensors(zs.head, ft.head) and 1.0 in known:
        return [{"alpha": a, **known[1.0]} for a in alphas]
    todo = [a for a in alphas if a not in known]
    group = models_per_pass(zs, budget)
    options = dict(
        batch_size=batch_size, num_workers=num_workers, device=device, precision=precision
    )
    computed = {}
    for start in range(0, len(todo), group):
        grid = todo[start : start + group]
        rows = evaluate_alphas(zs, ft, grid, bench, data_dir, val_set, eval_cache, log, options)
        computed.update(rows)
    return [{"alpha": a, **(known[a] if a in known else computed[a])} for a in alphas]


def same_tensors(a: dict | None, b: dict | None) -> bool:
    """Whether two state dicts (None: no head) hold the same tensors under the same keys."""
    return (
        a is not None
        and b is not None
        and a.keys() == b.keys()
        and all(torch.equal(a[k], b[k]) for k in a)
    )


def evaluate_alphas(
    zs: Checkpoint, ft: Checkpoint, grid, bench, data_dir, val_set, eval_cache, log, options: dict
) -> dict:
    """{alpha: row} for the alphas of ``grid``, their mixed models built at once and scored in one
    pass over ID-val and over each eval set (``options``: predict_many's); the models are freed
    on return."""
    from flyp.evaluation import evaluate_classifiers
    from flyp.scoring import predict_many, validation_scores

    classifiers = [
        interpolated_classifier(zs, ft, a, bench.classnames, bench.templates, options["device"])
        for a in grid
    ]
    logits, labels = predict_many(classifiers, val_set, desc="evaluating ID-val", **options)
    metrics = evaluate_classifiers(
        classifiers, bench, data_dir, eval_cache=eval_cache, log=lambda m: None, **options
    )
    rows = {}
    for a, each, m in zip(grid, logits, metrics, strict=True):
        rows[a] = {
            **validation_scores(each, labels, bench.id_set, getattr(val_set, "df", None)),
            **m,
        }
        log(
            f"alpha={a:.2f}  val {rows[a]['val_metric']}={rows[a]['val_score']:.4f}"
            "  " + "  ".join(f"{k}={v:.4f}" for k, v in m.items())
        )
    return rows


def pick_alpha(rows: list[dict]) -> dict:
    """The row with the best ID-val score (the smallest alpha among ties)."""
    return max(rows, key=lambda r: (r["val_score"], -r["alpha"]))


def curve_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def known_row(ckpt: Checkpoint, metrics_path) -> dict:
    """The curve's row of a model already evaluated: its ID-val scores as its checkpoint records
    them (what selected it) and its test metrics (``metrics.json``)."""
    from flyp.io import read_json

    return {
        "val_metric": ckpt.info["val_metric"],
        "val_score": ckpt.info["best_val_score"],
        "val_loss": ckpt.info["best_val_loss"],
        **read_json(metrics_path),
    }


def run_ensemble(
    benchmark_name,
    data_dir,
    zeroshot_path,
    finetuned_path,
    alphas,
    *,
    finetuned_metrics=None,
    zeroshot_metrics=None,
    curve_out,
    metrics_out,
    device="cpu",
    batch_size: int = 256,
    num_workers: int = 0,
    precision: str = "fp32",
    eval_cache=None,
    log=print,
) -> dict:
    """Evaluate the alpha grid, write the curve (CSV) and the metrics at the alpha picked on
    ID-val (JSON, with "alpha"); return the picked row. ``finetuned_metrics`` and
    ``zeroshot_metrics``: the ``metrics.json`` of the two ends, whose rows (a = 1 and a = 0)
    are then read, not recomputed. ``eval_cache``: ID-val and the eval sets read from this
    ``flyp evalcache`` folder."""
    from flyp.datasets import get_benchmark
    from flyp.evalcache import open_eval_cache
    from flyp.io import write_json, write_text
    from flyp.models import load_checkpoint, preprocess_cfg

    bench = get_benchmark(benchmark_name)
    zs, ft = load_checkpoint(zeroshot_path), load_checkpoint(finetuned_path)
    known = {}
    if finetuned_metrics:
        known[1.0] = known_row(ft, finetuned_metrics)
    if zeroshot_metrics:
        known[0.0] = known_row(zs, zeroshot_metrics)
    cache = open_eval_cache(eval_cache, data_dir, preprocess_cfg(ft))
    val = cache.dataset("val") if cache is not None else decoded_val_set(ft, data_dir)
    rows = ensemble_curve(
        zs,
        ft,
        alphas,
        bench,
        data_dir,
        val_set=val,
        known=known,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        precision=precision,
        eval_cache=eval_cache,
        log=log,
    )
    best = pick_alpha(rows)
    write_text(curve_out, curve_csv(rows))
    write_json(metrics_out, best)
    return best


def decoded_val_set(ckpt: Checkpoint, data_dir):
    """ID-val decoded from its table with ``ckpt``'s eval transform (read once by the curve: no
    need to cache it)."""
    from flyp.datasets import table_path
    from flyp.datasets.tables import ImageTable
    from flyp.models import checkpoint_transforms

    _, eval_tf = checkpoint_transforms(ckpt)
    return ImageTable(table_path(data_dir, "val"), eval_tf)
