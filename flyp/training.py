"""The one training loop every method shares (pretraining included).

AdamW with linear warmup then cosine decay, stepped per batch over every example (the last partial
batch included, as in the FLYP reference). Switches in params.yaml choose the reference's settings
or those of open_clip's trainer: weight decay on every parameter or on weight matrices only,
``logit_scale`` clamped to ln 100 after each step or not, gradient clipping, bf16 autocast. After
each epoch the task reports its ID-val score (the benchmark's own ID metric) and loss; the selected
epoch's weights are kept for evaluation (model selection on ID validation, never on test). Every
epoch, every ``checkpoint_minutes`` and on SIGTERM or SIGUSR1 (what SLURM sends before it pre-empts
or ends a job) the run writes a resume state, so an interrupted run (killed, pre-empted, crashed)
continues from its last state, mid-epoch too, to the same weights. Launched by torchrun over several
processes (``flyp.distributed``), each rank trains on its slice of the same global batches (its
BatchNorm layers, if any, normalising over the global batch: ``sync_bn``) and rank 0 validates,
selects and writes. TF32, when asked for (``tf32``, on CUDA), is on for the training steps alone
(``train_step``): validation and everything after the run compute in the arithmetic they state.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import pickle
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from flyp import distributed
from flyp.devices import arithmetic, tf32_scope, use_deterministic_algorithms
from flyp.io import Preempted, UserError, atomic_path, sha256_json, write_text
from flyp.loading import STOP_SIGNALS, make_loader
from flyp.progress import StepLog, Watch, log_curves, mean_since, open_curves
from flyp.settings import AUGMENTATIONS, TIES
from flyp.task import Task


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float
    wd: float
    batch_size: int
    warmup_steps: int
    seed: int
    grad_clip: float | None = None
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    decay: str = "all"  # all: every parameter (FLYP reference) | matrices: 2-D weights only
    clamp_logit_scale: bool = False  # clamp logit_scale to [0, ln 100] after each step
    num_workers: int = 0  # no effect on the result: every example's augmentation is seeded
    # Minutes between resume states written mid-epoch (besides each epoch's end and a stop signal);
    # 0: after every step. No effect on the result.
    checkpoint_minutes: float = 10.0
    # Speed only (the same numbers on a CPU): TF32 matmuls and convolutions on CUDA in the
    # training steps (off: fp32, as the reference trains); the CLIP's towers compiled with
    # torch.compile; open_clip's gradient checkpointing (less activation memory for about a third
    # more compute).
    tf32: bool = False
    compile: bool = False
    grad_checkpointing: bool | str = False  # or "auto": on where the job's memory plan needs it
    # What "auto" was resolved to on the job's device (flyp.memplan, by the CLI); the same numbers
    # either way, so a run resumes across it (another GPU may resolve it otherwise).
    checkpoint_blocks: bool | None = None
    # Deterministic kernels (set for the process by the CLI: flyp.devices.
    # use_deterministic_algorithms); on a GPU, a rerun matches bit for bit. Recorded in the
    # checkpoint when on (``run_record``); a run resumes across it.
    deterministic: bool = False
    # Over several ranks, BatchNorm layers normalise with the statistics of the global batch (as
    # one process does), not of each rank's slice (open_clip's --use-bn-sync). No effect on one
    # process or a model without BatchNorm.
    sync_bn: bool = True


# TrainConfig fields that change how a run goes, not what it computes: a run resumes across them.
RUNTIME_ONLY = ("num_workers", "checkpoint_minutes", "deterministic", "checkpoint_blocks")
# Fields that change a result only over several ranks, as the number of ranks itself does: like
# it, not part of the run's settings (a run resumes across them); a checkpoint records what they
# did (``run_record``: its "ranks").
RANKS_ONLY = ("sync_bn",)


def result_config(cfg: TrainConfig) -> dict:
    """What of ``cfg`` decides a run's result (its resume state is kept across the rest)."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_ONLY + RANKS_ONLY}


def run_record(cfg: TrainConfig, device: torch.device, synced_bn: bool) -> dict:
    """What a checkpoint records of how its run computed: the training steps' arithmetic (fp32,
    tf32 or bf16: ``flyp.devices.arithmetic``) and the ranks (how many; whether BatchNorm layers
    normalised over all of them); ``deterministic: true`` when its kernels were (absent: not);
    with grad_checkpointing auto, what it was resolved to."""
    auto = cfg.grad_checkpointing == "auto"
    return {
        "arithmetic": {"training": arithmetic(cfg.precision, cfg.tf32, device)},
        "ranks": {"world_size": distributed.world_size(), "sync_bn": bool(synced_bn)},
        **({"deterministic": True} if cfg.deterministic else {}),
        **({"grad_checkpointing": {"auto": bool(cfg.checkpoint_blocks)}} if auto else {}),
    }


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup from 0 to the base lr over ``warmup_steps``, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def drops_single_example_batch(n_examples: int, batch_size: int) -> bool:
    """Whether each epoch drops its last batch: only when that batch would hold one example.

    Every other partial batch is trained on, as in the FLYP reference (``drop_last=False``), so no
    example is left out. A batch of one is no use: its contrastive loss is identically 0 (a softmax
    over a single pair), so its step would be AdamW momentum and weight decay alone, and a BatchNorm
    layer with a 1x1 feature map cannot normalise it. At most one example an epoch is skipped, a
    random one each epoch."""
    return batch_size > 1 and n_examples % batch_size == 1


def kept_rows(batch_rows: int, batch_size: int, world_size: int = 1) -> int:
    """How many rows of a global batch of ``batch_rows`` are trained on: all of a full batch; of
    the epoch's last, partial one the largest multiple of the number of ranks (each rank gathers
    as many rows as the others: at most world_size - 1 random examples an epoch are left out), and
    none of a last batch of one example (drops_single_example_batch)."""
    kept = batch_rows - batch_rows % world_size
    return 0 if kept == 1 and batch_size > 1 else kept


class RankBatches(torch.utils.data.Sampler):
    """This rank's rows of each global batch. The global batches are those of one process: the
    shuffled ``order`` (a RandomSampler on the loader's generator, seeded by (seed, epoch)) cut
    into runs of ``batch_size``; rank r of W holds the r-th of W equal consecutive slices of each
    (``flyp.distributed.local_rows``), so what a step trains on does not depend on W. ``skip``:
    the number of batches of the next pass to leave out (already trained on before a resume)."""

    def __init__(
        self, order: torch.utils.data.Sampler, batch_size: int, rank: int = 0, world_size: int = 1
    ):
        self.order, self.batch_size = order, batch_size
        self.rank, self.world_size = rank, world_size
        self.skip = 0

    def __iter__(self):
        batches = torch.utils.data.BatchSampler(self.order, self.batch_size, drop_last=False)
        for index, batch in enumerate(batches):
            share = kept_rows(len(batch), self.batch_size, self.world_size) // self.world_size
            if share and index >= self.skip:
                yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        full, rest = divmod(len(self.order), self.batch_size)
        return full + (kept_rows(rest, self.batch_size, self.world_size) > 0)


class SeededItems(torch.utils.data.Dataset):
    """``dataset`` whose i-th example is made with the torch random stream seeded by (``seed``, i):
    an example's random augmentation depends on the pass's seed and its index alone, not on which
    DataLoader worker makes it nor on what was drawn before it, so neither the worker count nor
    resuming mid-epoch changes what a run trains on. The caller's random state is left as it was
    (the loss draws from it)."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset, self.seed = dataset, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        cpu = torch.default_generator  # what transforms draw from (torch.manual_seed, which also
        state = cpu.get_state()  # seeds every accelerator, takes 50x as long)
        cpu.manual_seed(mix_seed(self.seed, i))
        try:
            return self.dataset[i]
        finally:
            cpu.set_state(state)


def mix_seed(seed: int, index: int) -> int:
    """A 32-bit seed for (``seed``, ``index``): the CPU generator keeps only 32 bits of a seed, so
    the pair is mixed (SplitMix64's finaliser) rather than packed side by side."""
    z = ((seed << 32) + index) % 2**64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 % 2**64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB % 2**64
    return (z ^ (z >> 31)) >> 32


DECAY_MODES = ("all", "matrices")
MAX_LOGIT_SCALE = math.log(100)  # open_clip's trainer keeps exp(logit_scale) <= 100


def make_optimizer(
    module: nn.Module, lr: float, wd: float, decay: str = "all"
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. ``decay="all"``: weight decay on every one of them, as
    the FLYP and WiSE-FT reference code (``AdamW(params, weight_decay=wd)``); ``"matrices"``: none
    on biases, norms and ``logit_scale`` (open_clip's trainer)."""
    if decay not in DECAY_MODES:
        raise ValueError(f"decay {decay!r}: expected one of {DECAY_MODES}")
    decayed, exempt = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        exclude = decay == "matrices" and (
            p.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name
        )
        (exempt if exclude else decayed).append(p)
    groups = [{"params": decayed, "weight_decay": wd}, {"params": exempt, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") for p in decayed + exempt)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def optimizer_step(
    loss: torch.Tensor,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None = None,
) -> None:
    """One step of ``optimizer`` on ``loss``'s gradients (from zero), their norm over ``module``
    clipped to ``grad_clip`` when set."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()


@torch.no_grad()
def clamp_logit_scale(module: nn.Module) -> None:
    """Keep a trained CLIP temperature in [0, ln 100], as open_clip's trainer does after each step
    (the FLYP reference never clamps). Modules without a trainable ``logit_scale`` are untouched."""
    scale = getattr(module, "logit_scale", None)
    if isinstance(scale, nn.Parameter) and scale.requires_grad:
        scale.clamp_(0, MAX_LOGIT_SCALE)


@dataclass
class FitResult:
    best_epoch: int
    best_val: dict | None  # the selected epoch's validate() result
    history: list[dict]
    seconds: float


LOG_FIELDS = ["epoch", "step", "lr", "train_loss", "val_metric", "val_score", "val_loss", "seconds"]

# Which epoch fit() keeps: the best ID-val score (the benchmark's ID metric), the lowest ID-val
# cross-entropy (the few-shot protocol of the FLYP reference), or the last one.
SELECT_MODES = ("metric", "val_loss", "last")
# Which of two epochs with the same score (or loss) fit() keeps, and whether a training image's
# random augmentation (and a FLYP caption's template) is drawn afresh every epoch or once for the
# run (flyp.settings.TIES, AUGMENTATIONS; the FLYP reference's few-shot loop keeps the later epoch
# and transforms its k-per-class batch once).
PROTOCOL_DEFAULTS = {"tie": TIES[0], "augmentation": AUGMENTATIONS[0]}


def is_better(select: str, val: dict | None, best: dict | None, tie: str = "earlier") -> bool:
    """Whether an epoch with validation ``val`` replaces the kept one (``best``; None: none kept
    yet). A tie keeps the earlier epoch, or with ``tie="later"`` the later one. An epoch whose
    score (or, selecting on it, loss) is not a finite number is never kept: NaN compares false
    both ways, so it could otherwise stay "best"."""
    if val is not None and not math.isfinite(val["val_score"]):
        return False
    if select == "last":
        return True
    if val is None or (select == "val_loss" and not math.isfinite(val["val_loss"])):
        return False
    if best is None:
        return True
    if select == "metric":
        new, kept = val["val_score"], best["val_score"]
        return new > kept or (tie == "later" and new == kept)
    new, kept = val["val_loss"], best["val_loss"]
    return new < kept or (tie == "later" and new == kept)


def val_columns(val: dict | None) -> dict:
    if val is None:
        return {"val_metric": "", "val_score": "", "val_loss": ""}
    return {
        "val_metric": val["val_metric"],
        "val_score": f"{val['val_score']:.5f}",
        "val_loss": f"{val['val_loss']:.5f}",
    }


def selection_info(epoch: int, val: dict | None) -> dict:
    """What a checkpoint records about its selection."""
    val = val or {}
    return {
        "best_epoch": epoch,
        "val_metric": val.get("val_metric"),
        "best_val_score": val.get("val_score"),
        "best_val_loss": val.get("val_loss"),
    }


def run_label(info: dict) -> str:
    """Which run a message is about, from the checkpoint info ``fit`` gets."""
    keys = ("stage", "method", "benchmark", "seed", "shots", "draw")
    return ", ".join(f"{k} {info[k]}" for k in keys if info.get(k) is not None)


def diverged(info: dict, cfg: TrainConfig, epoch: int, step: int, what: str) -> UserError:
    """The one-line error of a run whose loss or weights stopped being finite numbers."""
    return UserError(
        f"training diverged ({run_label(info)}): {what} at epoch {epoch}, "
        f"step {step}; no checkpoint written. Try a lower learning rate "
        f"(lr {cfg.lr:g}), fp32 precision (precision {cfg.precision}) "
        f"or gradient clipping (grad_clip {cfg.grad_clip or 0:g})"
    )


@torch.no_grad()
def weights_finite(module: nn.Module) -> bool:
    """Whether every parameter is finite; one host sync for the whole module."""
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return not flags or bool(torch.stack(flags).all())


# Steps between reads of the training loss on the host: a read waits for the GPU to finish every
# queued step, so reading each step (loss.item()) would keep the GPU idle while the next batch is
# prepared. A diverged run is still stopped within this many steps, before any checkpoint.
LOSS_READ_EVERY = 50


class LossMeter:
    """An epoch's training losses, summed on the device (in float64, as Python summed the floats
    of ``loss.item()``), and the first non-finite one with its step; no host sync per step. Over
    several ranks the readings are of all ranks, so that every rank stops at the same step."""

    def __init__(self, device: torch.device):
        self.sum = torch.zeros((), dtype=torch.float64, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float64, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    @torch.no_grad()
    def add(self, loss: torch.Tensor, step: int) -> None:
        value = loss.detach().to(torch.float64)
        self.sum += value
        first = ~torch.isfinite(value) & (self.bad_step < 0)
        self.bad_value = torch.where(first, value, self.bad_value)
        self.bad_step = torch.where(first, step, self.bad_step)

    def first_non_finite(self) -> tuple[float, int] | None:
        """(loss, step) of the first non-finite loss so far on any rank, or None."""
        mine = torch.stack([self.bad_step.to(torch.float64), self.bad_value])[None]  # (1, 2)
        found = [
            (int(step), value)
            for step, value in distributed.gather_rows(mine).tolist()
            if step >= 0
        ]
        if not found:
            return None
        step, value = min(found)
        return value, step

    def total(self) -> float:
        """The sum of the epoch's losses (over ranks, of the global batches' losses)."""
        return float(distributed.mean_over_ranks(self.sum))

    def state(self) -> list[torch.Tensor]:
        """This rank's readings so far (rank 0's go in a mid-epoch resume state)."""
        return [t.detach().cpu() for t in (self.sum, self.bad_value, self.bad_step)]

    def load(self, state: list[torch.Tensor]) -> None:
        """Continue from ``state``: the epoch's steps before a resume count in its mean loss."""
        device = self.sum.device
        self.sum, self.bad_value, self.bad_step = (t.to(device) for t in state)


# Steps between checks, in a run over several ranks, of whether any rank got a stop signal (a
# host sync of every rank): all ranks must stop after the same step.
STOP_CHECK_EVERY = 10


class Stopping:
    """When to write a mid-epoch resume state: every ``minutes`` (0: every step), and at once on
    SIGTERM or SIGUSR1, after which the run stops (``signalled``). A context manager: the signal
    handlers are this run's only (the previous ones come back after it). DataLoader workers
    ignore these signals (``flyp.loading``): SLURM signals every process of a job, and a worker
    killed by one would end the run before its state is written."""

    def __init__(self, minutes: float, device: torch.device):
        self.every, self.last, self.signum = minutes * 60, time.monotonic(), None
        self.device, self._previous = device, {}

    def __enter__(self):
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
        except ValueError:  # not the main thread: the caller handles signals
            pass
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _note(self, signum, frame) -> None:
        self.signum = signum

    def signalled(self, step: int, last_step: int) -> int | None:
        """The stop signal (any rank's, over several), or None to go on; with several ranks it
        is read every STOP_CHECK_EVERY steps of an epoch and at its ``last_step``, where every
        rank reads it."""
        if distributed.world_size() == 1:
            return self.signum
        if step % STOP_CHECK_EVERY and step != last_step:
            return None
        mine = torch.tensor([[float(self.signum or 0)]], device=self.device)
        signums = [int(v) for v in distributed.gather_rows(mine).flatten().tolist() if v]
        return signums[0] if signums else None

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def saved(self) -> None:
        self.last = time.monotonic()


class TaskLoss(nn.Module):
    """``task.loss`` as the forward of a module that holds the task's module, so that
    DistributedDataParallel sees each step's use of its parameters through its own forward,
    whichever methods the loss calls (a CLIP's forward, ``encode_image``, a classifier's)."""

    def __init__(self, task: Task):
        super().__init__()
        self.module, self.task = task.module, task

    def forward(self, batch) -> torch.Tensor:
        return self.task.loss(batch)


def step_loss(task: Task) -> Callable:
    """What computes a step's loss: ``task.loss`` in one process; over several ranks the same
    wrapped in DistributedDataParallel, which averages the gradients across ranks in backward
    (overlapped with it, bucket by bucket). Buffers (BatchNorm's running statistics) are rank 0's.
    A BatchNorm layer normalises with the statistics of the global batch (``cfg.sync_bn``, as
    TrainingRun converts it: ``flyp.distributed.sync_batchnorm``), or, with ``sync_bn`` off, of
    its rank's slice, as open_clip's trainer does by default."""
    if distributed.world_size() == 1:
        return task.loss
    return DistributedDataParallel(TaskLoss(task))


def speed_up(module: nn.Module, cfg: TrainConfig) -> None:
    """Apply the speed switches of ``cfg`` that change the module (compiled towers, gradient
    checkpointing) to the CLIP in ``module`` (the module itself, or a classifier's ``clip``).
    TF32 is the training step's alone (``train_step``)."""
    checkpointing = cfg.grad_checkpointing
    checkpointing = bool(cfg.checkpoint_blocks) if checkpointing == "auto" else checkpointing
    if not (cfg.compile or checkpointing):
        return
    clip = getattr(module, "clip", module)
    if not hasattr(clip, "visual"):
        raise UserError(f"compile / grad_checkpointing: {type(module).__name__} holds no CLIP")
    if checkpointing:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in clip.modules()):
            # The recomputed forward would update BatchNorm's running statistics twice a step.
            raise UserError(
                "grad_checkpointing: the model has BatchNorm layers, whose running "
                "statistics the recomputed forward would update twice a step; use "
                "it with a ViT, or turn it off"
            )
        clip.set_grad_checkpointing(True)
    if cfg.compile:
        for tower in clip_towers(clip):
            tower.compile()


def clip_towers(clip: nn.Module) -> list[nn.Module]:
    """The image tower and the text transformer of an open_clip CLIP (``text`` in a CustomTextCLIP):
    where the compute is, so compiling them speeds every use (``forward``, ``encode_image``,
    ``encode_text``) without changing the module's structure or its state_dict keys."""
    text = getattr(clip, "transformer", None)
    if text is None:
        text = getattr(clip, "text", None)
    return [t for t in (clip.visual, text) if t is not None]


def log_csv_text(history: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k, "") for k in LOG_FIELDS})
    return buf.getvalue()


def read_resume_state(path: Path, progress: Callable[[str], None]) -> dict | None:
    """The resume state at ``path``, or None when there is none or it is not one this loop wrote
    (a file that needs more than tensors and plain containers to unpickle is never executed:
    ``weights_only``); the run then starts over and overwrites it."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        progress(f"ignoring {path}: not a resume state of this loop ({reason})")
        return None
    return state if isinstance(state, dict) else None


def check_run(task: Task, cfg: TrainConfig, info: dict, select: str, protocol: dict) -> None:
    """Refuse, before any work, a run the loop cannot make: an unknown ``select`` or selection
    ``protocol`` value (``tie``, ``augmentation``), a global batch the ranks cannot share equally,
    or too few examples for each rank to have one."""
    if select not in SELECT_MODES:
        raise ValueError(f"select: expected one of {SELECT_MODES}, got {select!r}")
    for key, allowed in (("tie", TIES), ("augmentation", AUGMENTATIONS)):
        if protocol[key] not in allowed:
            raise ValueError(f"{key}: expected one of {allowed}, got {protocol[key]!r}")
    world = distributed.world_size()
    if cfg.batch_size % world:
        raise UserError(
            f"batch_size {cfg.batch_size}: not divisible by the {world} processes of "
            f"the run (runtime.gpus_per_job), each of which takes an equal slice"
        )
    n_examples = len(task.train_data)
    if n_examples - drops_single_example_batch(n_examples, cfg.batch_size) < world:
        raise UserError(
            f"{n_examples} training examples ({run_label(info)}): too few for a "
            f"batch (batch_size {cfg.batch_size}); is the train table empty?"
        )


class ResumeState:
    """Where a run's resume state lives: a hidden folder beside its ``out``, holding ``state.pt``
    (what the loop continues from) and ``best.safetensors`` (the checkpoint of the epoch selected
    so far), removed once ``out`` is written. A state is this run's when its ``run_hash`` (of the
    settings that decide the result) is this run's."""

    def __init__(self, out: Path, run_hash: str):
        self.folder = out.with_name(f".{out.name}.resume")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file, self.best_file = self.folder / "state.pt", self.folder / "best.safetensors"
        self.run_hash = run_hash

    def read(self, progress: Callable[[str], None]) -> dict | None:
        """The state written by this run, or None (none there, not one this loop wrote, or one
        of a run with other settings: the run then starts over and overwrites it)."""
        state = read_resume_state(self.file, progress)
        if state is not None and state.get("run_hash") != self.run_hash:
            progress(f"ignoring {self.file}: it belongs to a run with other settings")
            return None
        return state

    def write(self, state: dict) -> None:
        """Write ``state`` after this run's hash, atomically (a kill leaves the previous one)."""
        with atomic_path(self.file) as tmp:
            torch.save({"run_hash": self.run_hash, **state}, tmp)

    def remove(self) -> None:
        """Remove the folder: the state, and any that a kill left half-written beside it."""
        shutil.rmtree(self.folder, ignore_errors=True)


class TrainBatches:
    """A run's training batches, each epoch's drawn from its seed alone: the order from the
    loader's generator, each example's augmentation from SeededItems. RankBatches gives this rank
    its slice of every global batch and leaves out those a resumed epoch has trained on."""

    def __init__(self, dataset: torch.utils.data.Dataset, cfg: TrainConfig, device: torch.device):
        self.generator = torch.Generator()
        self.items = SeededItems(dataset)
        order = torch.utils.data.RandomSampler(self.items, generator=self.generator)
        self.batches = RankBatches(
            order, cfg.batch_size, distributed.rank(), distributed.world_size()
        )
        self.loader = make_loader(
            self.items,
            batch_size=None,
            batch_sampler=self.batches,
            generator=self.generator,
            workers=cfg.num_workers,
            device=device,
        )

    def start_epoch(self, seed: int, skip: int) -> None:
        """The next pass is the epoch with ``seed``, less its first ``skip`` batches."""
        self.generator.manual_seed(seed)
        self.items.seed = seed
        self.batches.skip = skip


class TrainingRun:
    """The parts of one ``fit``: the module, its optimizer and schedule, the training batches, and
    what the run has kept so far (every epoch's log row, the selected epoch and its ID-val result,
    the seconds spent), which the resume state holds. Rank 0 alone validates, logs and writes.
    ``protocol``: ``tie`` (TIES) and ``augmentation`` (AUGMENTATIONS), as ``fit`` takes them."""

    def __init__(
        self,
        task: Task,
        cfg: TrainConfig,
        device: torch.device,
        state: ResumeState,
        *,
        info: dict,
        select: str,
        protocol: dict,
        progress: Callable[[str], None],
    ):
        self.task, self.cfg, self.device, self.state = task, cfg, device, state
        self.select, self.main = select, distributed.is_main()
        self.tie, self.augmentation = protocol["tie"], protocol["augmentation"]
        self.progress = progress if self.main else _quiet
        if cfg.deterministic:  # the CLI set it before CUDA started; a library caller, here
            use_deterministic_algorithms()
        self.module = task.module.to(device)
        synced = cfg.sync_bn and distributed.world_size() > 1
        synced = synced and distributed.sync_batchnorm(self.module, device)
        self.info = {**info, **run_record(cfg, device, synced)}
        speed_up(self.module, cfg)
        self.optimizer = make_optimizer(self.module, cfg.lr, cfg.wd, cfg.decay)
        self.data = TrainBatches(task.train_data, cfg, device)
        self.steps = len(self.data.loader)  # the partial batch counts: the schedule ends on it
        self.scheduler = cosine_with_warmup(
            self.optimizer, cfg.warmup_steps, cfg.epochs * self.steps
        )
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if cfg.precision == "bf16"
            else contextlib.nullcontext()
        )
        # Where training starts and what it has kept: a new run's, unless resume() finds a state.
        self.start_epoch, self.start_step, self.resumed = 1, 0, None
        self.best_epoch, self.best_val, self.history, self.elapsed = 0, None, [], 0.0
        self.steplog, self.live, self.last_read = None, None, None  # start_watch: rank 0's

    def resume(self) -> None:
        """Continue from this run's resume state, if there is one."""
        state = self.state.read(self.progress)
        if state is None:
            return
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.start_step = state["epoch"] + 1, state.get("step", 0)
        self.best_epoch, self.best_val = state["best_epoch"], state["best_val"]
        self.history, self.elapsed, self.resumed = state["history"], state["seconds"], state
        where = (
            f"step {self.start_step} of epoch {self.start_epoch}"
            if self.start_step
            else f"epoch {state['epoch']}"
        )
        self.progress(f"resuming from {self.state.file} after {where}")

    def save(self, epoch: int, step: int, losses: LossMeter | None, seconds: float) -> None:
        """Write the resume state after ``step`` steps of epoch ``epoch + 1`` (0: at the end of
        epoch ``epoch``); rank 0 only (the ranks' weights are the same). Mid-epoch it holds the
        random state and the epoch's losses so far."""
        mid_epoch = (
            {} if losses is None else {"rng": torch.get_rng_state(), "losses": losses.state()}
        )
        self.state.write(
            {
                "epoch": epoch,
                "step": step,
                "module": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "best_epoch": self.best_epoch,
                "best_val": self.best_val,
                "history": self.history,
                "seconds": seconds,
                **mid_epoch,
            }
        )

    def record(self, row: dict, val: dict | None) -> None:
        """Log an epoch's row; keep its weights when they are the best so far."""
        self.history.append(row)
        self.progress("  ".join(f"{k}={v}" for k, v in row.items()))
        self.watch_epoch(row, val)
        if is_better(self.select, val, self.best_val, self.tie):
            self.best_epoch, self.best_val = row["epoch"], val
            self.save_checkpoint(row["epoch"], val)

    def save_checkpoint(self, epoch: int, val: dict | None) -> None:
        """The weights, as epoch ``epoch``'s candidate checkpoint; what saving computes (a
        method's head from its text tower) in fp32, TF32 off."""
        with tf32_scope(False):
            self.task.save(self.state.best_file, {**self.info, **selection_info(epoch, val)})

    def validate(self) -> dict | None:
        """The task's ID-val result for the weights now, in fp32 (TF32 off: the training steps'
        switch is theirs alone)."""
        self.module.eval()
        with tf32_scope(False):
            return self.task.validate()

    def validate_start(self) -> None:
        """Epoch 0: the starting weights as a candidate (``include_start``), before any step."""
        val = self.validate()
        row = {"epoch": 0, "step": 0, "lr": "", "train_loss": ""}
        self.record({**row, **val_columns(val), "seconds": f"{self.elapsed:.1f}"}, val)

    def train_epoch(
        self, epoch: int, compute_loss: Callable, stopping: Stopping, t0: float
    ) -> LossMeter:
        """Train epoch ``epoch`` (begun at time ``t0``; a resumed one from the step its state was
        written at) and return its losses. Seeded per epoch: shuffling, augmentation (per
        example, SeededItems) and caption sampling depend only on (seed, epoch), so a resumed run
        draws exactly what an uninterrupted one would have. With ``augmentation="once"`` every
        epoch draws what the first one drew (the same order, crops and captions): each image is
        transformed once for the whole run."""
        epoch_seed = self.cfg.seed * 100_003 + (1 if self.augmentation == "once" else epoch)
        torch.manual_seed(epoch_seed)
        skip = self.start_step if epoch == self.start_epoch else 0
        self.data.start_epoch(epoch_seed, skip)
        losses = LossMeter(self.device)
        if skip:  # resumed mid-epoch: the random state and losses of that step
            torch.set_rng_state(self.resumed["rng"])
            losses.load(self.resumed["losses"])
        self.module.train()
        for count, batch in enumerate(self.data.loader, skip + 1):
            loss = self.train_step(compute_loss, batch)
            self.scheduler.step()
            if self.cfg.clamp_logit_scale:
                clamp_logit_scale(self.module)
            losses.add(loss, (epoch - 1) * self.steps + count)
            self.guard_loss(losses, epoch, count)
            self.report(epoch, count, losses)
            self.save_or_stop(stopping, epoch, count, losses, t0)
        return losses

    def start_watch(self, watch: Watch) -> None:
        """Rank 0: progress lines (and DVCLive curves in ``watch.curves``) from the step the run
        starts or resumes at (flyp.progress)."""
        if not self.main:
            return
        total = self.cfg.epochs * self.steps
        self.steplog = StepLog(total, self.cfg.batch_size, self.progress, watch)
        done = (self.start_epoch - 1) * self.steps + self.start_step
        self.steplog.start(done)
        self.live = open_curves(watch.curves, None if self.resumed is None else done, self.progress)
        self.progress(
            f"training: {total} steps ({self.cfg.epochs} epochs of {self.steps}), batch "
            f"{self.cfg.batch_size}; a progress line every {watch.every_steps} steps or "
            f"{watch.every_seconds:g} s"
        )

    def report(self, epoch: int, count: int, losses: LossMeter) -> None:
        """Rank 0, after step ``count`` of ``epoch``: a progress line when one is due, with the
        mean loss since the last one (read on the host here alone: a sync on CUDA)."""
        step = (epoch - 1) * self.steps + count
        if self.steplog is None or not self.steplog.due(step):
            return
        loss_sum = float(losses.sum)
        loss = mean_since(self.last_read, epoch, count, loss_sum)
        self.last_read = (epoch, count, loss_sum)
        lr = self.optimizer.param_groups[0]["lr"]
        log_curves(self.live, step, self.steplog.line(step, epoch, self.cfg.epochs, lr, loss))

    def watch_epoch(self, row: dict, val: dict | None) -> None:
        """An epoch's row into the curves (its mean training loss, ID-val score and loss); the
        next progress line's rate counts from now, after the validation pass."""
        if self.steplog is None:
            return
        self.steplog.restart_window(row["step"])
        values = {"epoch/train_loss": row["train_loss"] or None}
        if val is not None:
            values.update({"val/score": val["val_score"], "val/loss": val["val_loss"]})
        log_curves(self.live, row["step"], {k: _number(v) for k, v in values.items()})

    def train_step(self, compute_loss: Callable, batch) -> torch.Tensor:
        """One step on ``batch``: forward (under bf16 autocast with ``precision`` bf16), backward
        and the optimizer's step, with TF32 on for them alone when ``cfg.tf32`` (on CUDA; off
        otherwise: fp32), the TF32 flags as they were after it. Returns the loss."""
        with tf32_scope(self.cfg.tf32):
            with self.autocast:
                loss = compute_loss(batch)
            optimizer_step(loss, self.module, self.optimizer, self.cfg.grad_clip)
        return loss

    def guard_loss(self, losses: LossMeter, epoch: int, step: int) -> None:
        """Stop a run whose training loss stopped being finite (read every LOSS_READ_EVERY steps,
        a host sync, and at the epoch's last step)."""
        if step % LOSS_READ_EVERY == 0 or step == self.steps:
            bad = losses.first_non_finite()
            if bad is not None:
                raise diverged(self.info, self.cfg, epoch, bad[1], f"training loss {bad[0]}")

    def guard_weights(self, epoch: int) -> None:
        """Stop a run whose weights stopped being finite (checked at the end of each epoch)."""
        if not weights_finite(self.module):
            raise diverged(self.info, self.cfg, epoch, epoch * self.steps, "non-finite weights")

    def save_or_stop(
        self, stopping: Stopping, epoch: int, step: int, losses: LossMeter, t0: float
    ) -> None:
        """After ``step`` of ``epoch``: write the resume state when one is due or a stop signal
        came (to any rank), and after a signal end the run (Preempted)."""
        signum = stopping.signalled(step, self.steps)
        if signum is not None or (self.main and stopping.due()):
            if self.main:
                self.save(epoch - 1, step, losses, self.elapsed + time.time() - t0)
                stopping.saved()
            if signum is not None:
                raise self.preempted(signum, epoch, step)

    def preempted(self, signum: int, epoch: int, step: int) -> Preempted:
        """The run ends here, its state written, so that the same command resumes it (rank 0
        says so for the run: the other ranks' message is empty)."""
        distributed.barrier()
        name = signal.Signals(signum).name
        said = (
            f"stopped by {name} after step {step} of epoch {epoch} "
            f"({run_label(self.info) or 'training'}); resume state in {self.state.file}: the same "
            f"command continues the run"
        )
        return Preempted(signum, said if self.main else "")

    def end_epoch(self, epoch: int, train_loss: float, t0: float) -> None:
        """Rank 0, after epoch ``epoch`` (begun at time ``t0``): validate, log and select it, and
        write the resume state."""
        val = self.validate()
        self.elapsed += time.time() - t0
        row = {
            "epoch": epoch,
            "step": epoch * self.steps,
            "lr": f"{self.optimizer.param_groups[0]['lr']:.3g}",
            "train_loss": f"{train_loss / self.steps:.5f}",
        }
        self.record({**row, **val_columns(val), "seconds": f"{self.elapsed:.1f}"}, val)
        self.save(epoch, 0, None, self.elapsed)

    def finish(self, out: Path, log_csv: Path, include_start: bool) -> None:
        """Rank 0, after the last epoch: the selected checkpoint to ``out``, the log to
        ``log_csv``; the resume state removed."""
        if self.cfg.epochs == 0 and not include_start:  # nothing to train: the starting weights
            self.save_checkpoint(0, None)
        if not self.state.best_file.is_file():  # every epoch's validation score was NaN or inf
            raise UserError(
                f"no epoch of the run ({run_label(self.info)}) has a finite validation "
                f"score; no checkpoint written"
            )
        write_text(log_csv, log_csv_text(self.history))
        self.state.best_file.replace(out)
        self.state.remove()


def resume_hash(cfg: TrainConfig, info: dict, select: str, include_start: bool, protocol: dict):
    """What a run's resume state must have been written with (ResumeState): the settings that
    decide its result, and the selection; ``protocol``'s keys only where they differ from the
    default (a run of the default protocol resumes from a state written before it existed)."""
    changed = {k: v for k, v in protocol.items() if v != PROTOCOL_DEFAULTS[k]}
    return sha256_json(
        {
            "cfg": result_config(cfg),
            "info": info,
            "select": select,
            "include_start": include_start,
            **changed,
        }
    )


def fit(
    task: Task,
    cfg: TrainConfig,
    *,
    out: Path,
    log_csv: Path,
    device: torch.device,
    info: dict,
    select: str = "metric",
    include_start: bool = False,
    tie: str = "earlier",
    augmentation: str = "per_epoch",
    progress: Callable[[str], None] = print,
    watch: Watch | None = None,
) -> FitResult:
    """Train ``task`` for ``cfg.epochs`` and write the selected checkpoint to ``out``.

    ``select`` (one of SELECT_MODES): keep the epoch with the best ID-val score, the one with the
    lowest ID-val loss, or the last one; on a tie the earlier epoch, or the later with ``tie``
    "later". ``include_start``: the starting weights are a candidate too, as epoch 0 (validated
    before the first step). ``augmentation`` "once": every epoch trains on what the first drew
    (AUGMENTATIONS). The resume state lives in a hidden folder beside ``out`` and is removed once
    ``out`` is written; it is written at the end of each epoch, every ``cfg.checkpoint_minutes``
    mid-epoch, and on SIGTERM or SIGUSR1, after which the run raises Preempted (the same call then
    resumes it, mid-epoch, to the same weights). ``watch``: the progress lines and curves
    (flyp.progress). A non-finite training loss (kept on the device, read every LOSS_READ_EVERY
    steps; the message names its step) or non-finite weights (checked each epoch) stop the run
    with a UserError, and ``out`` is not written.

    In a run over several ranks (``flyp.distributed``), ``cfg.batch_size`` is the global batch:
    each rank trains on its slice of it (RankBatches), and rank 0 alone validates, selects, logs
    and writes while the others wait.
    """
    protocol = {"tie": tie, "augmentation": augmentation}
    check_run(task, cfg, info, select, protocol)
    out, log_csv = Path(out), Path(log_csv)
    state = ResumeState(out, resume_hash(cfg, info, select, include_start, protocol))
    run = TrainingRun(
        task, cfg, device, state, info=info, select=select, protocol=protocol, progress=progress
    )
    run.resume()
    run.start_watch(watch or Watch())
    compute_loss = step_loss(task)  # after resuming: DistributedDataParallel starts in sync
    if include_start and not run.history and run.main:  # epoch 0: the starting weights
        run.validate_start()
    with Stopping(cfg.checkpoint_minutes, device) as stopping:
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            t0 = time.time()
            losses = run.train_epoch(epoch, compute_loss, stopping, t0)
            total = losses.total()  # over the ranks
            run.guard_weights(epoch)
            if run.main:
                run.end_epoch(epoch, total, t0)  # validated, logged, its state written
                stopping.saved()
            distributed.barrier()
    if run.main:
        run.finish(out, log_csv, include_start)
    distributed.barrier()
    return FitResult(run.best_epoch, run.best_val, run.history, run.elapsed)


def _number(value) -> float | None:
    """A log row's number (its CSV text, or a float), None where it has none."""
    return None if value in (None, "") else float(value)


def _quiet(message: str) -> None:
    """The progress log of ranks other than 0: rank 0 says it for the run."""
