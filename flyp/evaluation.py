"""Evaluation: a checkpoint scored on the ID test set and every OOD set, with its provenance."""

from __future__ import annotations

import torch

from flyp.scoring import maybe_cached, predict, score


def evaluate_checkpoint(benchmark_name: str, data_dir, checkpoint, *, metrics_out, provenance_out,
                        batch_size: int = 256, num_workers: int = 0,
                        device: torch.device | None = None, log=print) -> dict:
    """Score ``checkpoint`` on every eval set of the benchmark.

    Writes ``metrics_out`` ({set: value, ..., "avg_ood": mean over OOD sets}) and
    ``provenance_out`` (checkpoint hash, data hash, params hash, seed, selected epoch).
    """
    from flyp.datasets import get_benchmark
    from flyp.io import UserError, write_json
    from flyp.models import classifier_from_checkpoint, load_checkpoint

    bench = get_benchmark(benchmark_name)
    ckpt = load_checkpoint(checkpoint)
    classes = None if ckpt.head is None else ckpt.head["weight"].shape[0]
    if classes is not None and classes != len(bench.classnames):
        raise UserError(f"{checkpoint}: its head scores {classes} classes, but benchmark "
                        f"{bench.name!r} has {len(bench.classnames)}; evaluate a checkpoint "
                        f"with the benchmark it was finetuned on")
    classifier = classifier_from_checkpoint(ckpt).to(device or "cpu")
    metrics = evaluate_classifier(classifier, bench, data_dir, batch_size=batch_size,
                                  num_workers=num_workers, device=device, log=log)
    write_json(provenance_out, provenance(ckpt, checkpoint, data_dir))
    write_json(metrics_out, metrics)
    return metrics


def evaluate_classifier(classifier, bench, data_dir, *, batch_size: int = 256,
                        num_workers: int = 0, device=None, log=print,
                        cache: dict | None = None) -> dict:
    """{eval set: metric, ..., "avg_ood": mean over the OOD sets} of ``classifier``.

    ``cache``: a dict kept across calls (e.g. every alpha of a weight ensemble) in which small eval
    sets are kept decoded and transformed."""
    from flyp.datasets import table_path
    from flyp.datasets.tables import ImageTable
    from flyp.models import image_transforms

    _, eval_tf = image_transforms(classifier.clip)
    metrics = {}
    for eval_set in bench.eval_sets:
        if cache is not None and eval_set.name in cache:
            dataset = cache[eval_set.name]
        else:
            dataset = ImageTable(table_path(data_dir, eval_set.name), eval_tf)
            if cache is not None:
                dataset = cache.setdefault(eval_set.name, maybe_cached(dataset))
        logits, labels = predict(classifier, dataset, batch_size=batch_size,
                                 num_workers=num_workers, device=device)
        metrics[eval_set.name] = score(logits, labels, eval_set, dataset.df)
        log(f"{eval_set.name}: {eval_set.metric} {metrics[eval_set.name]:.4f} "
            f"({len(dataset)} images)")
    ood = [metrics[s.name] for s in bench.ood_sets]
    if ood:
        metrics["avg_ood"] = sum(ood) / len(ood)
    return metrics


def provenance(ckpt, checkpoint_path, data_dir) -> dict:
    """Where a result comes from: checkpoint, data, parameter and pretrained-model hashes, seed,
    selected epoch (and the ID-val score it was selected on, with the metric's name), the code
    that trained and evaluated it (commit, and the diff when the tree was dirty), the experiment."""
    from pathlib import Path

    from flyp.datasets.manifest import data_hash
    from flyp.io import sha256_file, sha256_json
    from flyp.provenance import code_revision, experiment_name, revision_label

    info = ckpt.info
    train_code, eval_code = info.get("code") or {}, code_revision()
    return {
        "method": info.get("method"),
        "best_epoch": info.get("best_epoch"),
        "select": info.get("select"),  # what picked the epoch: "metric" (val_metric) or "val_loss"
        "val_metric": info.get("val_metric"),
        "best_val_score": info.get("best_val_score"),
        "seed": info.get("seed"),
        "shots": info.get("shots"),
        "draw": info.get("draw"),
        "checkpoint_sha256": sha256_file(checkpoint_path),
        "data_hash": data_hash(Path(data_dir)),
        # the parameters only (the method and its training config), never the pretrained model's
        # info: two runs of the same params.yaml get the same hash on any machine
        "params_hash": sha256_json({"method": info.get("method"), "config": info.get("config")}),
        "pretrained_sha256": info.get("pretrained_sha256"),
        "train_code": revision_label(train_code),  # the code that trained the checkpoint
        "eval_code": revision_label(eval_code),  # the code that evaluated it
        # the diffs (saved beside the table as results/code/<hash>.diff by the report)
        "code_diffs": {revision_label(r): r["diff"] for r in (train_code, eval_code)
                       if r.get("diff")},
        "experiment": experiment_name(),
    }
