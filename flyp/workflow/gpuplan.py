"""`flyp plan`: every GPU job of a preset, as params.yaml sets it, against a GPU's memory.

The settings are resolved as the workflow resolves them (``flyp.workflow.config``:
``load_params``, ``training_settings``); each job's peak is estimated without a GPU by
``flyp.memplan`` (the model traced on the meta device).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from flyp import memplan
from flyp.workflow.config import load_params, read_yaml, training_settings


@dataclass(frozen=True)
class Row:
    job: memplan.Job
    auto: bool  # grad_checkpointing auto (resolved in ``job``)
    peak: int  # bytes
    unchecked: int | None  # bytes without gradient checkpointing, where it is on
    fits: bool
    remedies: tuple[str, ...]


def preset_jobs(
    params_path: Path, schema_path: Path, benchmark: str, overrides: dict
) -> list[tuple[memplan.Job, bool]]:
    """(job, whether its grad_checkpointing is auto) for every method of the preset (a full run,
    and a few-shot draw at the largest k), and evaluation. ``overrides``: ``batch_size`` (for
    every method, as the top-level key), ``precision``, ``grad_checkpointing`` (True, False or
    "auto") and ``gpus_per_job``, each when not None."""
    from flyp.datasets import get_benchmark

    params = read_yaml(params_path)
    params["benchmark"] = benchmark
    if overrides.get("batch_size") is not None:
        params["batch_size"] = overrides["batch_size"]
    runtime = params.setdefault("runtime", {})
    for key in ("grad_checkpointing", "gpus_per_job"):
        if overrides.get(key) is not None:
            runtime[key] = overrides[key]
    run = load_params(params, schema_path, source=str(params_path))
    model, classes = run["model"]["name"], len(get_benchmark(benchmark).classnames)
    gc, gpus = run["runtime"]["grad_checkpointing"], run["runtime"]["gpus_per_job"]
    runs = [(method, None) for method in run["methods"]]
    shots = max(run["fewshot"]["shots"], default=None)
    runs += [(method, shots) for method in run["fewshot"]["methods"] if shots]
    jobs = []
    for method, k in runs:
        name = f"{benchmark} {method}" + (f" k={k}" if k else "")
        if memplan.job_kind(method) == memplan.INFERENCE:
            jobs.append((memplan.Job(name, model, method, memplan.EVAL_BATCH, classes), False))
            continue
        cfg = training_settings(run, method, seed=0, classes=classes, shots=k)
        precision = overrides.get("precision") or cfg.get("precision", "fp32")
        job = memplan.Job(name, model, method, cfg["batch_size"], classes, precision, gc is True)
        jobs.append((replace(job, gpus=gpus), gc == "auto"))
    evaluation = memplan.Job(f"{benchmark} evaluation", model, memplan.EVALUATION, 256, classes)
    return jobs + [(evaluation, False)]


def plan(jobs: list[tuple[memplan.Job, bool]], memory: int) -> list[Row]:
    """Each job against ``memory`` bytes (grad_checkpointing auto resolved for it)."""
    rows = []
    for job, auto in jobs:
        if auto:
            job = memplan.auto_grad_checkpointing(job, memory)
        peak = memplan.estimate(job).peak
        off = replace(job, grad_checkpointing=False)
        unchecked = memplan.estimate(off).peak if job.grad_checkpointing else None
        fixes = () if peak <= memory else tuple(memplan.remedies(job, memory))
        rows.append(Row(job, auto, peak, unchecked, peak <= memory, fixes))
    return rows


def table(rows: list[Row], memory: int) -> str:
    """The plan as a Markdown table."""
    lines = [
        f"GPU memory {memory / memplan.GIB:g} GiB; estimates, not measurements (flyp/memplan.py)",
        "",
        "| job | batch per GPU | GPUs | precision | grad ckpt | peak GiB | without ckpt | fits "
        "| would fit with |",
        "|---|---:|---:|---|---|---:|---:|---|---|",
    ]
    for row in rows:
        job = row.job
        trains = job.kind != memplan.INFERENCE
        gc = ("on" if job.grad_checkpointing else "off") if trains else "-"
        gc = f"auto: {gc}" if row.auto else gc
        lines.append(
            f"| {job.name} | {job.per_rank} | {job.gpus} | "
            f"{job.precision if trains else 'fp32, no grad'} | {gc} | "
            f"{row.peak / memplan.GIB:.1f} | "
            f"{'' if row.unchecked is None else f'{row.unchecked / memplan.GIB:.1f}'} | "
            f"{'yes' if row.fits else 'NO'} | "
            f"{'; or '.join(row.remedies)} |"
        )
    return "\n".join(lines)
