"""DataLoaders of every step (training, ID-val, features, evaluation, weight ensembling).

Images leave the loaders as uint8 tensors (``flyp.models.preprocess_transforms``) and are
normalised on the model's device. On CUDA the batches are put in pinned memory, so that the copy
to the GPU (``to_device``, non-blocking) overlaps the work already queued there. Every loader
honours the job's worker count; ``auto`` derives it from the cores the job is given.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal

import torch

AUTO = "auto"
# What SLURM sends before it pre-empts or ends a job: a training run then writes its resume state
# and stops (flyp.training.Stopping); DataLoader workers ignore them (ignore_stop_signals).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def available_cores() -> int:
    """The cores this process may run on (a job's CPU set, not the machine's core count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def resolve_workers(workers: int | str, threads: int = 0) -> int:
    """DataLoader worker processes for a job with ``threads`` cores (0: the cores it may use).
    ``auto``: one fewer than its cores, so the main process keeps one (0 on a single core: a
    worker would only compete with the main process for it)."""
    if workers != AUTO:
        return int(workers)
    return max(0, (threads or available_cores()) - 1)


def make_loader(
    dataset,
    *,
    batch_size: int | None,
    workers: int = 0,
    device=None,
    shuffle=False,
    drop_last=False,
    generator=None,
    batch_sampler=None,
) -> torch.utils.data.DataLoader:
    """A loader with ``workers`` processes (none for a set already held as tensors, in memory or
    memory-mapped, which says so with ``held_as_tensors = True``: a worker would only copy it once
    more) and pinned batches when they go to a CUDA device. A ``batch_sampler`` (training's
    ``RankBatches``) replaces batch_size, shuffle and drop_last.

    Workers are started afresh for every pass (not persistent): each pass draws their seeds from
    ``generator``. Training seeds each example's augmentation itself (flyp.training.SeededItems),
    so that it does not depend on the worker count."""
    if getattr(dataset, "held_as_tensors", False):
        workers = 0
    cuda = device is not None and torch.device(device).type == "cuda"
    batching = (
        {"batch_sampler": batch_sampler}
        if batch_sampler is not None
        else {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    )
    return torch.utils.data.DataLoader(
        dataset,
        **batching,
        generator=generator,
        num_workers=workers,
        pin_memory=cuda,
        worker_init_fn=ignore_stop_signals if workers else None,
    )


def ignore_stop_signals(worker_id: int) -> None:
    """In a DataLoader worker: SIGTERM and SIGUSR1 are for the main process, which writes the
    run's resume state and then stops (flyp.training.Stopping); SLURM sends them to every process
    of a job, and a worker they killed would end the run first. The workers end with the loader,
    or at the main process's exit (end_workers_at_exit)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@atexit.register
def end_workers_at_exit() -> None:
    """Kill the worker processes still running when the main process exits (those of a loader
    an exception's traceback still holds, say). multiprocessing would end them with SIGTERM, which
    they ignore (ignore_stop_signals), and then wait for them for ever. Registered after
    multiprocessing's own exit hook (torch imports it first), so it runs before that hook."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report the kill
    for child in multiprocessing.active_children():
        if child.daemon:  # DataLoader workers are; multiprocessing ends these at exit anyway
            child.kill()


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor`` on ``device``; from pinned memory the copy does not wait for the host."""
    return tensor.to(device, non_blocking=True)
