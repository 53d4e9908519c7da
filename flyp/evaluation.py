"""Evaluation: a checkpoint scored on the ID test set and every OOD set, with its provenance."""

from __future__ import annotations

import torch

from flyp.scoring import eval_arithmetic, predict_many, score


def evaluate_checkpoint(
    benchmark_name: str,
    data_dir,
    checkpoint,
    *,
    metrics_out,
    provenance_out,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | None = None,
    precision: str = "fp32",
    eval_cache=None,
    log=print,
) -> dict:
    """Score ``checkpoint`` on every eval set of the benchmark (images read from ``eval_cache``,
    a ``flyp evalcache`` folder, when given; the same metrics either way).

    Writes ``metrics_out`` ({set: value, ..., "avg_ood": mean over OOD sets}) and
    ``provenance_out`` (checkpoint hash, data hash, params hash, seed, selected epoch, the
    arithmetic of each phase).
    """
    from flyp.datasets import get_benchmark
    from flyp.io import UserError, write_json
    from flyp.models import classifier_from_checkpoint, load_checkpoint

    bench = get_benchmark(benchmark_name)
    ckpt = load_checkpoint(checkpoint)
    classes = None if ckpt.head is None else ckpt.head["weight"].shape[0]
    if classes is not None and classes != len(bench.classnames):
        raise UserError(
            f"{checkpoint}: its head scores {classes} classes, but benchmark "
            f"{bench.name!r} has {len(bench.classnames)}; evaluate a checkpoint "
            f"with the benchmark it was finetuned on"
        )
    classifier = classifier_from_checkpoint(ckpt).to(device or "cpu")
    metrics = evaluate_classifier(
        classifier,
        bench,
        data_dir,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        precision=precision,
        eval_cache=eval_cache,
        log=log,
    )
    evaluated_in = eval_arithmetic(precision, device or "cpu")
    write_json(provenance_out, provenance(ckpt, checkpoint, data_dir, evaluated_in))
    write_json(metrics_out, metrics)
    return metrics


def evaluate_classifier(classifier, bench, data_dir, **options) -> dict:
    """{eval set: metric, ..., "avg_ood": mean over the OOD sets} of ``classifier``."""
    return evaluate_classifiers([classifier], bench, data_dir, **options)[0]


def evaluate_classifiers(
    classifiers: list,
    bench,
    data_dir,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device=None,
    precision: str = "fp32",
    eval_cache=None,
    log=print,
) -> list[dict]:
    """``evaluate_classifier`` of each classifier, in one pass over each eval set: every batch is
    decoded once and scored by all of them (the alpha grid of a weight ensemble). They must share
    one preprocessing (the transform is that of the first). With ``eval_cache`` (a folder) the
    images are read from the cache, which must have been made with that preprocessing."""
    import open_clip

    from flyp.datasets import table_path
    from flyp.datasets.tables import ImageTable
    from flyp.evalcache import open_eval_cache
    from flyp.models import image_transforms

    clip = shared_preprocessing(classifiers)
    _, eval_tf = image_transforms(clip)
    cache = open_eval_cache(eval_cache, data_dir, open_clip.get_model_preprocess_cfg(clip))
    results = [{} for _ in classifiers]
    for eval_set in bench.eval_sets:
        dataset = (
            cache.dataset(eval_set.name)
            if cache is not None
            else ImageTable(table_path(data_dir, eval_set.name), eval_tf)
        )
        logits, labels = predict_many(
            classifiers,
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            precision=precision,
            desc=f"evaluating {eval_set.name}",
        )
        for metrics, each in zip(results, logits, strict=True):
            metrics[eval_set.name] = score(each, labels, eval_set, dataset.df)
        values = ", ".join(f"{m[eval_set.name]:.4f}" for m in results)
        log(f"{eval_set.name}: {eval_set.metric} {values} ({len(dataset)} images)")
    for metrics in results:
        ood = [metrics[s.name] for s in bench.ood_sets]
        if ood:
            metrics["avg_ood"] = sum(ood) / len(ood)
    return results


def shared_preprocessing(classifiers: list):
    """The CLIP of the first classifier, after checking every classifier expects the same
    preprocessing (one decoded batch serves them all)."""
    import open_clip

    cfgs = [open_clip.get_model_preprocess_cfg(c.clip) for c in classifiers]
    if any(cfg != cfgs[0] for cfg in cfgs):
        raise ValueError("classifiers evaluated in one pass need the same preprocessing")
    return classifiers[0].clip


def provenance(ckpt, checkpoint_path, data_dir, evaluated_in: str = "fp32") -> dict:
    """Where a result comes from: checkpoint, data, parameter and pretrained-model hashes, seed,
    selected epoch (and the ID-val score it was selected on, with the metric's name), the code
    that trained and evaluated it (commit, and the diff when the tree was dirty), the arithmetic
    of each phase (``evaluated_in``: the evaluation's), the ranks it trained on, the
    experiment."""
    from pathlib import Path

    from flyp.datasets.manifest import data_hash
    from flyp.io import sha256_file, sha256_json
    from flyp.provenance import code_revision, experiment_name, revision_label

    info = ckpt.info
    train_code, eval_code = info.get("code") or {}, code_revision()
    return {
        "method": info.get("method"),
        "best_epoch": info.get("best_epoch"),
        "select": info.get(
            "select"
        ),  # what kept the epoch: "metric" (val_metric), "val_loss", "last"
        "val_metric": info.get("val_metric"),
        "best_val_score": info.get("best_val_score"),
        "seed": info.get("seed"),
        "shots": info.get("shots"),
        "draw": info.get("draw"),
        # a few-shot draw's protocol switches, where not the default (flyp.finetuning.selection)
        **{k: info[k] for k in ("tie", "augmentation") if k in info},
        "checkpoint_sha256": sha256_file(checkpoint_path),
        "data_hash": data_hash(Path(data_dir)),
        # the parameters only (the method and its training config), never the pretrained model's
        # info: two runs of the same params.yaml get the same hash on any machine
        "params_hash": sha256_json({"method": info.get("method"), "config": info.get("config")}),
        "pretrained_sha256": info.get("pretrained_sha256"),
        "train_code": revision_label(train_code),  # the code that trained the checkpoint
        "eval_code": revision_label(eval_code),  # the code that evaluated it
        # the diffs (saved beside the table as results/code/<hash>.diff by the report)
        "code_diffs": {
            revision_label(r): r["diff"] for r in (train_code, eval_code) if r.get("diff")
        },
        "arithmetic": arithmetic_record(info, evaluated_in),
        "ranks": info.get("ranks"),  # training's: how many, whether BatchNorm synchronised
        # runtime.grad_checkpointing auto: what the training job's GPU resolved it to
        **{k: info[k] for k in ("grad_checkpointing",) if k in info},
        # training's kernels were deterministic (runtime.deterministic); absent: not asked for
        **({"deterministic": True} if info.get("deterministic") else {}),
        "experiment": experiment_name(),
    }


def arithmetic_record(info: dict, evaluated_in: str) -> dict:
    """What each phase of a result computed in (fp32, tf32 or bf16; flyp.devices.arithmetic):
    the pretraining here (None: released weights), the finetuning (None: a method that takes no
    gradient steps, zero-shot and the linear probe; a checkpoint older than this record) and the
    evaluation."""
    pretrained = info.get("pretrained") or {}
    return {
        "pretraining": (pretrained.get("arithmetic") or {}).get("training"),
        "training": (info.get("arithmetic") or {}).get("training"),
        "evaluation": evaluated_in,
    }
