"""One run over several processes (ranks) with torch.distributed, as ``torchrun`` launches it.

After open_clip_train's ``distributed.py``: the launcher's environment (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) says which process is which; NCCL joins the GPUs (one per
rank), gloo the CPU processes (tests, CI). Each rank trains on its slice of every global batch
(``flyp.training.RankBatches``); DistributedDataParallel averages the gradients and the contrastive
losses gather the features of every rank, so the negatives are the global batch. Outside a process
group every helper here is the identity of one process (rank 0 of 1).
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from flyp.devices import resolve_device
from flyp.io import UserError

# How long a rank waits at a collective for the others; rank 0 validates and writes checkpoints
# alone at the end of each epoch while the others wait at a barrier.
TIMEOUT = datetime.timedelta(hours=2)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process validates, selects, logs and writes (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def local_rows(values: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a tensor drawn for the whole global batch (W*b, ...) -> (b, ...): ranks
    hold consecutive equal slices of each global batch, in rank order."""
    share = len(values) // world_size()
    return values[rank() * share : (rank() + 1) * share]


def gather_rows(values: torch.Tensor) -> torch.Tensor:
    """Every rank's (b, ...) rows, in rank order (W*b, ...); no gradient (labels, counts)."""
    if world_size() == 1:
        return values
    parts = [torch.empty_like(values) for _ in range(world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (a logged loss: each rank's is of its slice)."""
    if world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def launched_ranks() -> int:
    """How many processes the launcher started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def process_group(device: str = "auto"):
    """The torch device of this process, inside the process group that torchrun's environment
    describes (no group when launched as one process: ``resolve_device`` alone). With ``auto`` on
    a machine with GPUs, or ``cuda``, each rank claims a GPU that no other flyp process holds
    (``resolve_device``) and the ranks join over NCCL; with ``cpu``, or ``auto`` on a machine
    without GPUs, they are CPU processes joined over gloo."""
    ranks = launched_ranks()
    if ranks == 1:
        yield resolve_device(device)
        return
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(
            f"--device {device}: a run over {ranks} processes gives each rank a GPU "
            f"of its own; use auto, cuda or cpu"
        )
    here = resolve_device(device)
    if here.type == "cuda":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", ranks))
        if torch.cuda.device_count() < per_node:
            raise UserError(
                f"{per_node} processes on this machine, but it has "
                f"{torch.cuda.device_count()} CUDA GPU(s): one each is needed "
                f"(runtime.gpus_per_job)"
            )
        torch.cuda.set_device(here)
    dist.init_process_group("nccl" if here.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield here
    finally:
        dist.destroy_process_group()
