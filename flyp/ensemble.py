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
    shape_mismatch,
)


def interpolate_state(zs: dict, ft: dict, a: float) -> dict:
    """Floating-point tensors mixed; integer buffers (e.g. BatchNorm's step count) from ``ft``.
    Written as (1 - a) * zs + a * ft so that a = 0 and a = 1 give exactly zs and ft."""
    if zs.keys() != ft.keys():
        raise ValueError("checkpoints have different weights; not the same architecture")
    return {k: ((1 - a) * zs[k] + a * ft[k]) if ft[k].is_floating_point() else ft[k].clone()
            for k in ft}


def check_ensemble_pair(zeroshot_path, finetuned_path) -> None:
    """Refuse, from the two files' headers and before any evaluation, a pair that cannot be mixed:
    other architectures, other tensor shapes, or (for a finetuned head that is not rebuilt from
    the text tower) a zero-shot checkpoint without a head of the same shape."""
    (zs_meta, zs_shapes), (ft_meta, ft_shapes) = (checkpoint_layout(zeroshot_path),
                                                  checkpoint_layout(finetuned_path))
    where = f"--ensemble-with {zeroshot_path}"
    if zs_meta["model_name"] != ft_meta["model_name"]:
        raise UserError(f"{where}: a {zs_meta['model_name']!r} checkpoint, but {finetuned_path} "
                        f"is {ft_meta['model_name']!r}; weight ensembling needs the same "
                        f"architecture (the zero-shot checkpoint of the same pretrained model)")
    parts = ["clip."] if ft_meta["info"].get("head_from_text") else ["clip.", "head."]
    for prefix in parts:
        mismatch = shape_mismatch({k: v for k, v in ft_shapes.items() if k.startswith(prefix)},
                                  {k: v for k, v in zs_shapes.items() if k.startswith(prefix)})
        if mismatch:
            raise UserError(f"{where}: its tensors do not fit those of {finetuned_path}: "
                            f"{mismatch}")


def head_from_text(ckpt: Checkpoint) -> bool:
    return bool(ckpt.info.get("head_from_text"))


def interpolated_classifier(zs: Checkpoint, ft: Checkpoint, a: float, classnames, templates,
                            device="cpu") -> ImageClassifier:
    if zs.model_name != ft.model_name:
        raise ValueError(f"cannot ensemble {zs.model_name} with {ft.model_name}")
    clip = clip_from_checkpoint(ft)  # the architecture and its preprocessing config
    clip.load_state_dict(interpolate_state(zs.clip, ft.clip, a))
    clip = clip.to(device)
    if head_from_text(ft):
        head = build_zero_shot_head(clip, get_tokenizer(ft.model_name), classnames, templates)
    else:
        head = head_from_state(interpolate_state(zs.head, ft.head, a)).to(device)
    return ImageClassifier(clip, head).eval()


def ensemble_curve(zs: Checkpoint, ft: Checkpoint, alphas, bench, data_dir, *, val_set,
                   known: dict | None = None, device="cpu", log=print) -> list[dict]:
    """One row per alpha: {"alpha", "val_metric", "val_score", "val_loss", <eval set>...,
    "avg_ood"}; the val score is the benchmark's ID metric on ``val_set``. ``known`` maps an alpha
    to an already computed row (a = 0 and a = 1 are the zero-shot and finetuned results)."""
    from flyp.evaluation import evaluate_classifier
    from flyp.scoring import predict, validation_scores

    rows = []
    eval_cache: dict = {}  # the eval sets, decoded and transformed once for every alpha

    def identical(a: dict | None, b: dict | None) -> bool:
        return a is not None and b is not None and a.keys() == b.keys() and all(
            torch.equal(a[k], b[k]) for k in a)

    # The same weights and head on both ends (zero-shot with itself): nothing to mix.
    same = identical(zs.clip, ft.clip) and identical(zs.head, ft.head) and 1.0 in (known or {})
    for a in alphas:
        if same:  # mixing a model with itself (zero-shot): every alpha is that model
            rows.append({"alpha": a, **known[1.0]})
            continue
        if known and a in known:
            rows.append({"alpha": a, **known[a]})
            continue
        classifier = interpolated_classifier(zs, ft, a, bench.classnames, bench.templates, device)
        logits, labels = predict(classifier, val_set, device=device)
        val = validation_scores(logits, labels, bench.id_set, getattr(val_set, "df", None))
        metrics = evaluate_classifier(classifier, bench, data_dir, device=device,
                                      log=lambda m: None, cache=eval_cache)
        rows.append({"alpha": a, **val, **metrics})
        log(f"alpha={a:.2f}  val {val['val_metric']}={val['val_score']:.4f}  "
            + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
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




def run_ensemble(benchmark_name, data_dir, zeroshot_path, finetuned_path, alphas, *,
                 finetuned_metrics=None, curve_out, metrics_out, device="cpu",
                 log=print) -> dict:
    """Evaluate the alpha grid, write the curve (CSV) and the metrics at the alpha picked on
    ID-val (JSON, with "alpha"); return the picked row."""
    from flyp.datasets import get_benchmark, table_path
    from flyp.datasets.tables import ImageTable
    from flyp.io import read_json, write_json, write_text
    from flyp.models import checkpoint_transforms, load_checkpoint
    from flyp.scoring import maybe_cached

    bench = get_benchmark(benchmark_name)
    zs, ft = load_checkpoint(zeroshot_path), load_checkpoint(finetuned_path)
    known = {}  # alpha 1 is the finetuned model, already evaluated
    if finetuned_metrics:
        known[1.0] = {"val_metric": ft.info["val_metric"], "val_score": ft.info["best_val_score"],
                      "val_loss": ft.info["best_val_loss"], **read_json(finetuned_metrics)}
    _, eval_tf = checkpoint_transforms(ft)
    val = maybe_cached(ImageTable(table_path(data_dir, "val"), eval_tf))
    rows = ensemble_curve(zs, ft, alphas, bench, data_dir, val_set=val, known=known,
                          device=device, log=log)
    best = pick_alpha(rows)
    write_text(curve_out, curve_csv(rows))
    write_json(metrics_out, best)
    return best
