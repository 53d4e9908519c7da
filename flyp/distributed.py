"""One run over several processes (ranks) with torch.distributed, as ``torchrun`` launches it.

After open_clip_train's ``distributed.py``: the launcher's environment (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) says which process is which; NCCL joins the GPUs (one per
rank), gloo the CPU processes (tests, CI). Each rank trains on its slice of every global batch
(``flyp.training.RankBatches``); DistributedDataParallel averages the gradients and the contrastive
losses gather the features of every rank, so the negatives are the global batch; BatchNorm layers
normalise over the global batch too (``sync_batchnorm``). Outside a process group every helper
here is the identity of one process (rank 0 of 1).
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

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
    (through lock files, so not necessarily cuda:<rank>) and makes it its current device
    (``resolve_device``), and the ranks join over NCCL; with ``cpu``, or ``auto`` on a machine
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
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", ranks))
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    if gpus and gpus < per_node:  # checked before claiming: a rank would wait for a GPU
        raise UserError(
            f"{per_node} processes on this machine, but it has {gpus} CUDA GPU(s): one "
            f"each is needed (runtime.gpus_per_job)"
        )
    here = resolve_device(device)
    dist.init_process_group("nccl" if here.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield here
    finally:
        dist.destroy_process_group()


class SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks, with its gradient: every rank's output is the same
    sum, so the gradient of the input on a rank is the sum over ranks of the output's gradients
    (an all-reduce in backward too, as SyncBatchNorm's backward does)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def sync_batchnorm(module: nn.Module, device: torch.device) -> bool:
    """Make the BatchNorm layers of ``module`` normalise over the global batch (every rank's
    rows) in training, in place: each is replaced in its parent by a synchronised one that holds
    its parameters and buffers (the same tensors). On CUDA that is torch.nn.SyncBatchNorm, as
    open_clip's ``--use-bn-sync`` (``convert_sync_batchnorm``); on CPU ranks (gloo), which it
    refuses, GlobalBatchNorm. Returns whether ``module`` had any. A BatchNorm subclass with a
    forward of its own (e.g. timm's BatchNormAct2d) is refused with a one-line UserError."""
    synced = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    found = False
    for prefix, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SyncBatchNorm | GlobalBatchNorm):
                found = True
            elif type(child) in PLAIN_BATCHNORMS:
                setattr(parent, name, converted_batchnorm(child, synced))
                found = True
            elif isinstance(child, nn.modules.batchnorm._BatchNorm):
                raise UserError(
                    f"sync_bn: {prefix + '.' if prefix else ''}{name} is a "
                    f"{type(child).__name__}, a BatchNorm layer this run cannot synchronise "
                    f"over its ranks; set runtime.sync_bn false (--no-sync-bn)"
                )
    return found


def converted_batchnorm(layer: nn.Module, synced: type) -> nn.Module:
    """A ``synced`` BatchNorm layer holding the parameters and buffers of ``layer``."""
    new = synced(
        layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
    )
    if layer.affine:
        new.weight, new.bias = layer.weight, layer.bias
    new.running_mean, new.running_var = layer.running_mean, layer.running_var
    new.num_batches_tracked = layer.num_batches_tracked
    return new.train(layer.training)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm layer (input (N, C, ...)) that, training over several ranks, normalises with
    the mean and (biased) variance of the global batch, as one process over all its rows does,
    and updates its running statistics with them (the unbiased variance over all rows). The
    sums are all-reduced with their gradients (SumOverRanks), so that each rank's gradient
    carries what its rows did to every rank's statistics, as SyncBatchNorm's backward does; the
    mean is reduced first and the variance from it (two passes, no E[x^2] - E[x]^2
    cancellation). Works over any backend (gloo: CPU ranks, which torch.nn.SyncBatchNorm
    refuses). In evaluation or in one process, a plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of 2 or more dimensions, got {input.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims, shape = [0, *range(2, x.dim())], (1, -1) + (1,) * (x.dim() - 2)
        rows = x.new_full((1,), x.numel() // x.shape[1])
        sums = SumOverRanks.apply(torch.cat([x.sum(dims), rows]))
        count = sums[-1].detach()
        centred = x - (sums[:-1] / count).view(shape)
        var = SumOverRanks.apply((centred * centred).sum(dims)) / count
        self._track(sums[:-1].detach() / count, var.detach(), count)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """The running statistics' update of a training step, as nn.BatchNorm's."""
        if not self.track_running_stats:
            return
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(var * count / (count - 1), alpha=factor)
