"""What a person watching a long job sees: progress lines with counts, rates and time left.

A training run (``flyp.training.fit``) logs a line every ``every_steps`` steps or every
``every_seconds``, whichever comes first: the step of the run, the epoch, images a second, the
learning rate, the mean training loss since the last line and the time the run has left. The loss
is read on the host at those lines alone (a host sync on CUDA), never at every step. When
``dvclive`` is installed and a curves folder is given, the same numbers and each epoch's ID-val
score and loss also go to DVCLive files there (``dvc plots show``); without it the run logs one
line saying the curves are off. Nothing here changes what a run computes.

Other long steps (checksums, archive extraction, the evaluation cache, evaluation) use
``progress_bar``: tqdm's bar on a terminal, and on a file (a Snakemake log) a plain line every
``LINE_SECONDS`` instead of carriage-return redraws.

This module imports neither torch nor dvclive at import time: data preparation imports it too.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

# Seconds between the lines of a long step when its log is a file, not a terminal.
LINE_SECONDS = 30.0
# Where training commands write their runs' curves by default (dvc.yaml's plots read it).
CURVES_ROOT = "logs/curves"


@dataclass(frozen=True)
class Watch:
    """How a training run reports its progress. ``curves``: the folder for its DVCLive files
    (None: no curves)."""

    every_steps: int = 1000
    every_seconds: float = 60.0
    curves: Path | None = None


def duration(seconds: float) -> str:
    """``seconds`` as h:mm:ss (``?`` when not a finite number)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class StepLog:
    """The progress lines of one training run (rank 0). ``total_steps``: the run's steps, every
    epoch's; ``batch_size``: examples a step (the global batch). ``clock``: seconds, monotonic
    (a test passes a fake one). Time left is the steps left at the rate of this process so far,
    validation passes included, so it also counts the epochs' validations still to come."""

    def __init__(
        self,
        total_steps: int,
        batch_size: int,
        log: Callable[[str], None],
        watch: Watch = Watch(),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.batch_size, self.log = total_steps, batch_size, log
        self.watch, self.clock = watch, clock
        self.first_step = 0  # of the run, before this process's first step
        self.started = self.last_time = clock()
        self.last_step = 0  # the step of the last line (when the next one is due)
        self.window_step = 0  # the step the next line's rate counts from

    def start(self, done_steps: int) -> None:
        """This process starts after ``done_steps`` of the run (a resumed run's)."""
        self.first_step = self.last_step = self.window_step = done_steps
        self.started = self.last_time = self.clock()

    def due(self, step: int) -> bool:
        """Whether a line is due after ``step`` of the run (cheap: no host sync)."""
        every = self.watch.every_steps
        if every and step - self.last_step >= every:
            return True
        return self.clock() - self.last_time >= self.watch.every_seconds

    def restart_window(self, step: int) -> None:
        """The next line's rate counts from now and from ``step``, the run's steps so far (after
        a validation pass, which is no step)."""
        self.last_time, self.window_step = self.clock(), step

    def line(self, step: int, epoch: int, epochs: int, lr: float, loss: float) -> dict:
        """Log the line after ``step`` of the run (``epoch`` of ``epochs``), ``loss`` the mean
        training loss since the last line; return its numbers (for the curves)."""
        now = self.clock()
        window = max(now - self.last_time, 1e-9)
        rate = (step - self.window_step) * self.batch_size / window
        per_step = (now - self.started) / max(step - self.first_step, 1)
        left = (self.total - step) * per_step
        self.log(
            f"step {step}/{self.total} ({100 * step / max(self.total, 1):.1f}%), epoch "
            f"{epoch}/{epochs}, {rate:.1f} images/s, lr {lr:.3g}, loss {loss:.4f}, elapsed "
            f"{duration(now - self.started)}, left {duration(left)}"
        )
        self.last_step, self.window_step, self.last_time = step, step, now
        return {"train/loss": loss, "lr": lr, "images_per_second": rate}


def mean_since(last: tuple | None, epoch: int, count: int, loss_sum: float) -> float:
    """The mean loss of the steps since ``last`` = (epoch, count, loss sum) of the previous line,
    from the epoch's running ``loss_sum`` over its first ``count`` steps (the epoch's mean so far
    when the previous line was in another epoch)."""
    if last is not None and last[0] == epoch and last[1] < count:
        return (loss_sum - last[2]) / (count - last[1])
    return loss_sum / max(count, 1)


def open_curves(folder: Path | None, resumed_at: int | None, log: Callable[[str], None]):
    """A ``dvclive.Live`` writing into ``folder``, or None: no folder, or DVCLive not installed
    (said in one line). A run resumed after step ``resumed_at`` keeps the points up to it (those
    after it, logged before the run stopped, are trained again); a new run starts the folder
    afresh. It writes no dvc.yaml, no metrics.json and makes no DVC experiment: Snakemake owns
    the DAG, and dvc.yaml's top-level plots read the files of ``folder/plots/metrics``."""
    if folder is None:
        return None
    try:
        from dvclive import Live
    except ImportError:
        log("training curves off: dvclive is not installed (pip install dvclive)")
        return None

    class FilesOnly(Live):
        """DVCLive's metric files alone. Live() otherwise imports DVC and opens the repository
        (0.8 to 1 s of a job's start-up, benchmarks/RESULTS.md) for what this uses none of: an
        experiment, a dvc.yaml, Studio's link to the repository."""

        def _init_dvc(self):
            pass

    if resumed_at is not None:
        _drop_points_after(Path(folder), resumed_at)
    live = FilesOnly(
        dir=str(folder), resume=resumed_at is not None, save_dvc_exp=False, dvcyaml=None
    )
    log(f"training curves (DVCLive) in {folder}: dvc plots show")
    return live


def _drop_points_after(folder: Path, step: int) -> None:
    """Remove the rows past ``step`` from DVCLive's metric files in ``folder`` (tab-separated,
    ``step`` in the first column)."""
    for tsv in (folder / "plots" / "metrics").rglob("*.tsv"):
        header, *rows = tsv.read_text().splitlines()
        kept = [r for r in rows if int(r.split("\t", 1)[0]) <= step]
        tsv.write_text("\n".join([header, *kept]) + "\n")


def log_curves(live, step: int, values: dict) -> None:
    """``values`` (finite ones) at ``step`` of the run into DVCLive's files, a row each."""
    if live is None:
        return
    live.step = step
    for name, value in values.items():
        if value is not None and math.isfinite(value):
            live.log_metric(name, value, plot=True)


def progress_bar(iterable: Iterable | None = None, *, total=None, desc: str = "", **tqdm_options):
    """tqdm over ``iterable`` (or updated by hand) on stderr: a bar on a terminal; on a file (a
    Snakemake log) one plain line at most every LINE_SECONDS, from LINE_SECONDS in, and one at
    the end, so that the log of a long step shows the count, rate and time left without carriage
    returns (and that of a short one nothing more)."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, **tqdm_options)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        file=_Lines(sys.stderr),
        mininterval=LINE_SECONDS,
        delay=LINE_SECONDS,  # a step shorter than that logs no line at all
        ascii=True,
        ncols=100,
        **tqdm_options,
    )


class _Lines:
    """A stream for tqdm that turns each redraw (``\\r`` + bar) into a line of its own and drops
    the blank redraw that clears a bar."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def curves_folder(root: Path, out: Path) -> Path:
    """Where the curves of the run writing checkpoint ``out`` go: ``root`` / ``out``'s path (made
    relative to the working folder where it lies under it) less its suffix, so each run, seed
    and draw has its own (logs/curves/models/embedded/flyp/full/seed0/best)."""
    out = Path(out).absolute()
    try:
        relative = out.relative_to(Path.cwd())
    except ValueError:
        relative = out.relative_to(out.anchor)
    return root / relative.with_suffix("")
