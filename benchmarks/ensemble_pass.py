"""Wall time of weight ensembling (the alpha grid over ID-val and every eval set), the old
per-alpha loop and the new one-pass evaluation side by side in one run, with a check that both
give the same curve:

- old: for each alpha, build the mixed model and run it over ID-val and each eval set (a set
  whose transformed images fit in 1 GiB was cached in memory and reused; ImageNet's are larger,
  so each alpha decoded them again);
- new: ``flyp.ensemble.ensemble_curve``: every mixed model is built once and every batch is
  decoded once and seen by all of them.

Two data sets: ``embedded`` (the embedded benchmark's tables, tiny PNGs, which the old code
cached) and ``jpeg`` (generated 400x350 JPEG files under every set's name, which the old code
decoded per alpha, as at ImageNet size). The model is the embedded benchmark's small CLIP at 32 px
(random weights; the finetuned end is a random step away), so decoding dominates, as it does for
ImageNet on a GPU.

    PYTHONPATH=. python benchmarks/ensemble_pass.py                 # both data sets
    PYTHONPATH=. python benchmarks/ensemble_pass.py --data jpeg --images 50

Old and new alternate ``--repeats`` times and the fastest time of each is printed (the CPUs may be
shared: a single timing moved by 30% between runs). Each run is a forked process, whose peak
resident memory is printed too (the parent's tables and checkpoints included).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from data_path import jpeg_table  # this folder is on the path of a script run from it

import flyp.scoring
from flyp.datasets import get_benchmark, table_path
from flyp.datasets.tables import ImageTable, read_table, write_table
from flyp.ensemble import ensemble_curve, interpolated_classifier
from flyp.models import Checkpoint, checkpoint_transforms, create_clip
from flyp.scoring import maybe_cached, predict, validation_scores

ALPHAS = [i / 10 for i in range(11)]


def old_curve(zs, ft, alphas, bench, data_dir, known) -> list[dict]:
    """The loop before this change (flyp/ensemble.py at f5c113c): per alpha, a model and a pass
    over every set, the sets cached when small enough."""
    _, eval_tf = checkpoint_transforms(ft)
    val_set = maybe_cached(ImageTable(table_path(data_dir, "val"), eval_tf))
    rows, cache = [], {}
    for a in alphas:
        if a in known:
            rows.append({"alpha": a, **known[a]})
            continue
        classifier = interpolated_classifier(zs, ft, a, bench.classnames, bench.templates)
        logits, labels = predict(classifier, val_set)
        val = validation_scores(logits, labels, bench.id_set, getattr(val_set, "df", None))
        metrics = {}
        for eval_set in bench.eval_sets:
            if eval_set.name not in cache:
                cache[eval_set.name] = maybe_cached(
                    ImageTable(table_path(data_dir, eval_set.name), eval_tf)
                )
            dataset = cache[eval_set.name]
            logits, labels = predict(classifier, dataset)
            metrics[eval_set.name] = flyp.scoring.score(logits, labels, eval_set, dataset.df)
        ood = [metrics[s.name] for s in bench.ood_sets]
        rows.append({"alpha": a, **val, **metrics, "avg_ood": sum(ood) / len(ood)})
    return rows


def new_curve(zs, ft, alphas, bench, data_dir, known) -> list[dict]:
    _, eval_tf = checkpoint_transforms(ft)
    val = ImageTable(table_path(data_dir, "val"), eval_tf)
    return ensemble_curve(
        zs, ft, alphas, bench, data_dir, val_set=val, known=known, log=lambda m: None
    )


def embedded_tables(folder: Path, images: int) -> Path:
    bench = get_benchmark("embedded")
    bench.prepare(
        folder,
        seed=0,
        image_size=32,
        pretrain_size=2,
        train_size=24,
        val_size=images,
        test_size=images,
        ood_size=images,
    )
    return folder


def jpeg_tables(folder: Path, images: int) -> Path:
    """Every set of the embedded benchmark as a table of 400x350 JPEG files (12 classes)."""
    bench = get_benchmark("embedded")
    df = read_table(jpeg_table(folder, images))
    df["label"] = df["label"] % len(bench.classnames)
    for name in ["val", *(s.name for s in bench.eval_sets)]:
        write_table(df, table_path(folder, name))
    return folder


def checkpoints() -> tuple[Checkpoint, Checkpoint]:
    torch.manual_seed(0)
    clip = create_clip("flyp-tiny-rn10t")
    zs = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    ft = {k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v for k, v in zs.items()}
    heads = [{"weight": torch.randn(12, 128), "bias": torch.zeros(12)} for _ in range(2)]
    return (
        Checkpoint("flyp-tiny-rn10t", zs, heads[0]),
        Checkpoint("flyp-tiny-rn10t", ft, heads[1]),
    )


def in_child(curve, *args) -> tuple[list[dict], float, float]:
    """(rows, seconds, peak resident MiB) of ``curve(*args)`` run in a forked process, so that
    each run's peak memory (Linux's VmHWM) is its own."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(_timed, (curve, *args))


def _timed(curve, *args):
    start = time.perf_counter()
    rows = curve(*args)
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return rows, seconds, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded,jpeg")
    parser.add_argument("--images", type=int, default=100, help="images a set (7 sets)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="old and new alternate; the fastest of each is kept (shared CPUs)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench = get_benchmark("embedded")
    zs, ft = checkpoints()
    print(
        f"{len(ALPHAS)} alphas, ID-val + {len(bench.eval_sets)} eval sets of "
        f"{args.images} images, flyp-tiny-rn10t at 32 px, {args.threads} torch thread(s)"
    )
    print(
        f"{'data':<10}{'old s':>9}{'new s':>9}{'ratio':>8}{'old MiB':>12}{'new MiB':>12}"
        "  same curve"
    )
    for data in args.data.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = {"embedded": embedded_tables, "jpeg": jpeg_tables}[data](
                Path(tmp), args.images
            )
            # The old code cached the embedded sets; ImageNet's were too large (decoded per alpha).
            flyp.scoring.CACHE_BYTES = 1 << 30 if data == "embedded" else 0
            runs = {old_curve: [], new_curve: []}  # (rows, seconds, peak RSS MiB) of each run
            for _ in range(args.repeats):
                for curve in runs:
                    runs[curve].append(in_child(curve, zs, ft, ALPHAS, bench, folder, {}))
        (old, old_s, old_mib), (new, new_s, new_mib) = (
            (runs[c][0][0], min(r[1] for r in runs[c]), max(r[2] for r in runs[c]))
            for c in (old_curve, new_curve)
        )
        print(
            f"{data:<10}{old_s:>9.1f}{new_s:>9.1f}{old_s / new_s:>8.2f}{old_mib:>12.0f}"
            f"{new_mib:>12.0f}  {old == new}",
            flush=True,
        )


if __name__ == "__main__":
    main()
