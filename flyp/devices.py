"""The torch device a job runs on (``--device``), the GPU it claims on a machine with several,
and the arithmetic a phase of the job computes in on it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from flyp.io import UserError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # as runtime.device in the params schema


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: cuda when there is a GPU, else cpu. A CUDA device is claimed (``claim_gpu``):
    ``auto`` and ``cuda`` take a GPU that no other flyp process holds, ``cuda:N`` takes GPU N when
    no other flyp process holds it (waiting for it, as for a free GPU, ``FLYP_GPU_WAIT``), so
    concurrent jobs (the workflow's, one per GPU: workflow/rules/common.smk; torchrun's ranks; runs
    started by hand) never share a GPU unknowingly; the claimed GPU is made the process's current
    device (``torch.cuda.set_device``). A device this machine does not have is a one-line
    UserError here, before any work (not a CUDA traceback at the first tensor moved)."""
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
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    wanted = int(device.partition(":")[2]) if ":" in device else None
    if wanted is None and _HELD:
        here = torch.device("cuda", _HELD[0])  # this process's claim (one GPU per process)
    elif wanted in _HELD:
        here = torch.device("cuda", wanted)
    else:
        gpus = [
            str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())
        ]
        here = torch.device("cuda", claim_gpu(gpus, wanted=wanted))
        _HELD.append(here.index)
    torch.cuda.set_device(here)
    return here


_CLAIMED_GPUS = []  # open lock files: a claim lasts as long as this process
_HELD = []  # indices of the GPUs resolve_device claimed for this process
GPU_WAIT = "FLYP_GPU_WAIT"  # seconds a process waits for a GPU when none is free
GPU_WAIT_DEFAULT = 600.0


def gpu_wait() -> float:
    """Seconds to wait for a free GPU: ``$FLYP_GPU_WAIT``, else 600 (0: fail at once)."""
    text = os.environ.get(GPU_WAIT, "")
    try:
        seconds = float(text) if text else GPU_WAIT_DEFAULT
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise UserError(f"${GPU_WAIT}: expected seconds (a number >= 0), got {text!r}")
    return seconds


def claim_gpu(
    gpus: list[str],
    lock_dir: Path | None = None,
    wanted: int | None = None,
    wait: float | None = None,
) -> int:
    """Index of a GPU of ``gpus`` (unique ids) whose lock file no other process holds: ``wanted``
    (``--device cuda:N``) or, without it, the first free one. Its lock is kept until this process
    exits (the OS releases it, even after a crash). When none is free (more GPU jobs than GPUs,
    e.g. `--resources gpu=N` above the count, or a run started by hand), the locks are polled
    every second for ``wait`` seconds (default ``gpu_wait()``), then a one-line UserError: a GPU is
    never shared unknowingly."""
    lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / f"flyp-gpu-locks-{os.getuid()}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    wait = gpu_wait() if wait is None else wait
    candidates = range(len(gpus)) if wanted is None else [wanted]
    deadline, waiting = time.monotonic() + wait, False
    while True:
        for index in candidates:
            handle = open(lock_dir / f"{gpus[index]}.lock", "w")  # held open: the lock lasts
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _CLAIMED_GPUS.append(handle)
            return index
        what = f"cuda:{wanted} is" if wanted is not None else f"all {len(gpus)} GPU(s) are"
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError(
                f"{what} held by other flyp processes (waited {wait:.0f} s; locks in "
                f"{lock_dir}): run fewer GPU jobs at once (--resources gpu=N) or wait longer "
                f"(${GPU_WAIT} seconds)"
            )
        if not waiting:  # said once
            print(
                f"{what} held by other flyp processes: waiting up to {wait:.0f} s", file=sys.stderr
            )
            waiting = True
        time.sleep(min(1.0, left))


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


# cuBLAS's deterministic workspace (CUDA's reproducibility notes): read when cuBLAS starts.
CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_algorithms() -> None:
    """Deterministic kernels for the rest of the process (``runtime.deterministic``): torch's
    deterministic algorithms, erroring (not warning) at an op that has none; cuBLAS's fixed
    workspace (``CUBLAS_WORKSPACE_CONFIG``, unless already set); cuDNN without autotuning and with
    its deterministic algorithms. Call it before CUDA is first used. On CUDA this replaces, e.g.,
    ``index_add_``'s atomic adds (the zero-shot head's sums) and attention's nondeterministic
    backward; a CPU's kernels are deterministic either way."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
