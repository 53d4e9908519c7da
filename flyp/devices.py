"""The torch device a job runs on (``--device``), the GPU it claims on a machine with several,
and the arithmetic a phase of the job computes in on it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from pathlib import Path

import torch

from flyp.io import UserError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # as runtime.device in the params schema


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: cuda when there is a GPU, else cpu. On a machine with several GPUs, ``auto`` and
    ``cuda`` take one that no other flyp process holds, so the workflow's concurrent GPU jobs
    (as many as there are GPUs, see workflow/rules/common.smk) each run on their own. A device
    this machine does not have is a one-line UserError here, before any work (not a CUDA
    traceback at the first tensor moved)."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        count, index = torch.cuda.device_count(), int(device.partition(":")[2] or 0)
        if count == 0:
            raise UserError(
                f"--device {device}: this machine has no CUDA GPU (torch sees none); "
                f"use --device cpu or auto"
            )
        if index >= count:
            raise UserError(
                f"--device {device}: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device in ("auto", "cuda") and torch.cuda.device_count() > 1:
        gpus = [
            str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())
        ]
        return torch.device("cuda", claim_gpu(gpus))
    return torch.device("cuda" if device == "auto" else device)


_CLAIMED_GPUS = []  # open lock files: a claim lasts as long as this process


def claim_gpu(gpus: list[str], lock_dir: Path | None = None) -> int:
    """Index of the first of ``gpus`` (unique ids) whose lock file no other process holds; its
    lock is kept until this process exits (the OS releases it, even after a crash). When every GPU
    is taken (more GPU jobs than GPUs, e.g. `--resources gpu=N` above the count) GPU 0 is shared."""
    lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / f"flyp-gpu-locks-{os.getuid()}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index, gpu in enumerate(gpus):
        handle = open(lock_dir / f"{gpu}.lock", "w")  # held open: the lock lasts as long
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _CLAIMED_GPUS.append(handle)
        return index
    return 0


# What a phase (training, evaluation) computes its matmuls and convolutions in: plain fp32, TF32
# (CUDA's 10-bit-mantissa tensor-core arithmetic for fp32 tensors), or bf16 autocast.
ARITHMETICS = ("fp32", "tf32", "bf16")


def arithmetic(precision: str, tf32: bool, device: torch.device | str) -> str:
    """The arithmetic a phase computes in: ``bf16`` under bf16 autocast (``precision``), on any
    device; ``tf32`` where TF32 is on and the phase runs on CUDA (a CPU has no TF32: the flags
    change nothing there); ``fp32`` otherwise."""
    if precision == "bf16":
        return "bf16"
    return "tf32" if tf32 and torch.device(device).type == "cuda" else "fp32"


@contextlib.contextmanager
def tf32_scope(on: bool):
    """TF32 matmuls (cuBLAS) and convolutions (cuDNN) on inside when ``on``, off otherwise (cuDNN
    convolutions default to TF32 in PyTorch: off means fp32 there too); both flags as they were
    after. The flags are process-wide and exist on CPU builds too, where they change nothing."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(on)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
