"""The one training loop every method shares (pretraining included).

AdamW with linear warmup then cosine decay, stepped per batch; weight decay only on weight matrices
(not on biases, norms or ``logit_scale``, as open_clip's trainer); optional gradient clipping. After
each epoch the task reports its ID-val score (the benchmark's own ID metric) and loss; the selected
epoch's weights are kept for evaluation (model selection on ID validation, never on test). Every
epoch also writes a resume state, so an interrupted run continues from its last finished epoch with
the same result.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from flyp.io import atomic_path, sha256_json, write_text


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
    num_workers: int = 0


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def make_optimizer(module: nn.Module, lr: float, wd: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name
        (no_decay if exclude else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


class Task:
    """What a method plugs into ``fit``: the module to optimise, its training data and loss, and
    how to validate and snapshot it. Subclasses override ``loss`` and ``validate``."""

    module: nn.Module
    train_data: torch.utils.data.Dataset

    def loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step (e.g. to clamp logit_scale)."""

    def validate(self) -> dict | None:
        """ID-val results of the current weights ({"val_metric": name, "val_score": the
        benchmark's ID metric, "val_loss": cross-entropy}; see
        ``flyp.evaluation.validation_scores``), or None when the task does no selection."""
        return None

    def save(self, path: Path, info: dict) -> None:
        """Write the current weights as a checkpoint (the one kept if this epoch is the best)."""
        raise NotImplementedError


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


def is_better(select: str, val: dict | None, best: dict | None) -> bool:
    """Whether an epoch with validation ``val`` replaces the kept one (``best``; None: none kept
    yet). Ties keep the earlier epoch."""
    if select == "last":
        return True
    if val is None:
        return False
    if best is None:
        return True
    if select == "metric":
        return val["val_score"] > best["val_score"]
    return val["val_loss"] < best["val_loss"]


def val_columns(val: dict | None) -> dict:
    if val is None:
        return {"val_metric": "", "val_score": "", "val_loss": ""}
    return {"val_metric": val["val_metric"], "val_score": f"{val['val_score']:.5f}",
            "val_loss": f"{val['val_loss']:.5f}"}


def selection_info(epoch: int, val: dict | None) -> dict:
    """What a checkpoint records about its selection."""
    val = val or {}
    return {"best_epoch": epoch, "val_metric": val.get("val_metric"),
            "best_val_score": val.get("val_score"), "best_val_loss": val.get("val_loss")}


def log_csv_text(history: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k, "") for k in LOG_FIELDS})
    return buf.getvalue()


def fit(task: Task, cfg: TrainConfig, *, out: Path, log_csv: Path, device: torch.device,
        info: dict, select: str = "metric", include_start: bool = False,
        progress: Callable[[str], None] = print) -> FitResult:
    """Train ``task`` for ``cfg.epochs`` and write the selected checkpoint to ``out``.

    ``select`` (one of SELECT_MODES): keep the epoch with the best ID-val score, the one with the
    lowest ID-val loss, or the last one. ``include_start``: the starting weights are a candidate
    too, as epoch 0 (validated before the first step). The resume state lives in a hidden folder
    beside ``out`` and is removed once ``out`` is written.
    """
    if select not in SELECT_MODES:
        raise ValueError(f"select: expected one of {SELECT_MODES}, got {select!r}")
    out, log_csv = Path(out), Path(log_csv)
    work = out.with_name(f".{out.name}.resume")
    work.mkdir(parents=True, exist_ok=True)
    state_file, best_file = work / "state.pt", work / "best.safetensors"
    run_hash = sha256_json({"cfg": asdict(cfg), "info": info, "select": select,
                            "include_start": include_start})

    module = task.module.to(device)
    optimizer = make_optimizer(module, cfg.lr, cfg.wd)
    loader_gen = torch.Generator()
    loader = torch.utils.data.DataLoader(
        task.train_data, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
        generator=loader_gen, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set "
                         f"({len(task.train_data)} examples)")
    scheduler = cosine_with_warmup(optimizer, cfg.warmup_steps, cfg.epochs * steps_per_epoch)

    start_epoch, best_epoch, best_val, history, elapsed = 1, 0, None, [], 0.0
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        if state.get("run_hash") == run_hash:
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch = state["epoch"] + 1
            best_epoch, best_val = state["best_epoch"], state["best_val"]
            history, elapsed = state["history"], state["seconds"]
            progress(f"resuming from {state_file} after epoch {state['epoch']}")
        else:
            progress(f"ignoring {state_file}: it belongs to a run with other settings")

    if include_start and not history:  # epoch 0: the starting weights, before any step
        module.eval()
        val = task.validate()
        row = {"epoch": 0, "step": 0, "lr": "", "train_loss": "", **val_columns(val),
               "seconds": f"{elapsed:.1f}"}
        history.append(row)
        progress("  ".join(f"{k}={v}" for k, v in row.items()))
        if is_better(select, val, best_val):
            best_epoch, best_val = 0, val
            task.save(best_file, {**info, **selection_info(0, val)})

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.time()
        # Seed per epoch: shuffling, augmentation and caption sampling depend only on (seed, epoch),
        # so a resumed run draws exactly what an uninterrupted one would have.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        loader_gen.manual_seed(cfg.seed * 100_003 + epoch)
        module.train()
        total, count = 0.0, 0
        for batch in loader:
            with autocast:
                loss = task.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            task.after_step()
            total += loss.item()
            count += 1
        module.eval()
        val = task.validate()
        elapsed += time.time() - t0
        row = {"epoch": epoch, "step": epoch * steps_per_epoch,
               "lr": f"{optimizer.param_groups[0]['lr']:.3g}", "train_loss": f"{total / count:.5f}",
               **val_columns(val), "seconds": f"{elapsed:.1f}"}
        history.append(row)
        progress("  ".join(f"{k}={v}" for k, v in row.items()))
        if is_better(select, val, best_val):
            best_epoch, best_val = epoch, val
            task.save(best_file, {**info, **selection_info(epoch, val)})
        with atomic_path(state_file) as tmp:
            torch.save({"run_hash": run_hash, "epoch": epoch, "module": module.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "best_epoch": best_epoch, "best_val": best_val, "history": history,
                        "seconds": elapsed}, tmp)

    if cfg.epochs == 0 and not include_start:  # nothing to train: keep the starting weights
        task.save(best_file, {**info, **selection_info(0, None)})
    write_text(log_csv, log_csv_text(history))
    best_file.replace(out)
    state_file.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        work.rmdir()
    return FitResult(best_epoch, best_val, history, elapsed)
