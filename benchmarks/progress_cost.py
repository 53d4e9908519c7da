"""What training's progress lines and DVCLive curves cost a step, and what importing dvclive costs
a job's start-up.

The run is the embedded benchmark's CLIP (flyp-tiny-rn10t at 32 px, random weights) trained
contrastively by ``flyp.training.fit`` on random images and caption tokens held in memory (no
decoding, so the loop's own cost is as visible as it gets), one epoch of ``--steps`` steps at
``--batch-size``, validation a constant. Variants, alternated ``--repeats`` times in one process
(the CPUs may be shared: the fastest of each is compared):

- ``default``: a line every 60 s or 1000 steps (none in a run this short but the first);
- ``every step``: a progress line after every step (the loss read on the host each step);
- ``every step + curves``: the same, and the DVCLive files written each step (needs dvclive).

Each variant's final weights are compared with the default's: logging must change no number.

    PYTHONPATH=. python benchmarks/progress_cost.py --steps 300 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from flyp.contrastive import ContrastiveTask
from flyp.models import create_clip
from flyp.progress import StepLog, Watch, log_curves, open_curves
from flyp.training import TrainConfig, fit

MODEL = "flyp-tiny-rn10t"


class RandomPairs(ContrastiveTask):
    """Random (image, tokens) pairs; validation returns a constant (it is not what is timed)."""

    def __init__(self, n: int):
        torch.manual_seed(0)
        super().__init__(create_clip(MODEL), MODEL, torch.device("cpu"))
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
        tokens = torch.randint(1, 1000, (n, 16))  # the model's context length
        self.train_data = torch.utils.data.TensorDataset(images, tokens)

    def captions(self, batch):
        return batch

    def validate(self) -> dict:
        return {"val_metric": "accuracy", "val_score": 0.5, "val_loss": 1.0}


def run(variant: str, args, folder: Path) -> tuple[float, torch.Tensor, int]:
    """(seconds of the fit, the final image tower's first weight, progress lines)."""
    task = RandomPairs(args.steps * args.batch_size)
    cfg = TrainConfig(
        epochs=1, lr=1e-4, wd=0.1, batch_size=args.batch_size, warmup_steps=10, seed=0
    )
    watch = Watch()
    if variant != "default":
        curves = folder / "curves" if "curves" in variant else None
        watch = Watch(every_steps=1, every_seconds=0, curves=curves)
    lines = []
    start = time.perf_counter()
    fit(
        task,
        cfg,
        out=folder / "best.safetensors",
        log_csv=folder / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=lines.append,
        watch=watch,
    )
    seconds = time.perf_counter() - start
    weight = next(task.module.visual.parameters()).detach().clone()
    return seconds, weight, sum(line.startswith("step ") for line in lines)


def import_seconds(module: str, repeats: int = 3) -> float:
    """The fastest wall time of ``python -c 'import module'`` less that of ``python -c pass``."""

    def fastest(code: str) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - start)
        return min(times)

    return fastest(f"import {module}") - fastest("pass")


# What opening the curves adds to a training job, which has imported torch, pandas and the loop
# already: dvclive's import and its Live() (which imports DVC to look for a repository).
OPEN_CURVES = """
import tempfile, time
import flyp.training, pandas
start = time.perf_counter()
from flyp.progress import open_curves
open_curves(tempfile.mkdtemp(), None, lambda m: None)
print(time.perf_counter() - start)
"""


def open_curves_seconds(repeats: int = 3) -> float:
    """The fastest of ``repeats`` fresh processes' seconds to open the curves (OPEN_CURVES)."""
    runs = [
        subprocess.run([sys.executable, "-c", OPEN_CURVES], check=True, capture_output=True)
        for _ in range(repeats)
    ]
    return min(float(r.stdout) for r in runs)


def report_microseconds(calls: int = 20_000) -> dict:
    """Microseconds a call of the loop's progress check (StepLog.due, no line due), and of a line
    with its curve points (StepLog.line + log_curves, when dvclive is installed)."""
    lines = StepLog(10**9, 64, lambda m: None, Watch(every_steps=0, every_seconds=3600))
    start = time.perf_counter()
    for step in range(calls):
        lines.due(step)
    costs = {"check": 1e6 * (time.perf_counter() - start) / calls}
    with tempfile.TemporaryDirectory() as tmp:
        live = open_curves(Path(tmp) / "c", None, lambda m: None)
        start = time.perf_counter()
        for step in range(calls // 20):
            log_curves(live, step, lines.line(step, 1, 1, 1e-4, 1.0))
        costs["line + curves" if live else "line"] = (
            1e6 * (time.perf_counter() - start) / (calls // 20)
        )
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = ["default", "every step"]
    try:
        import dvclive  # noqa: F401

        variants.append("every step + curves")
    except ImportError:
        print("dvclive not installed: the curves variant is left out")
    times = {v: [] for v in variants}
    weights, lines = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for v in variants:
                folder = Path(tmp) / f"{v.replace(' ', '_')}-{r}"
                seconds, weights[v], lines[v] = run(v, args, folder)
                times[v].append(seconds)
    base = min(times["default"])
    print(f"{args.steps} steps at batch {args.batch_size}, {args.repeats} repeats, 1 thread")
    print("| variant | progress lines | fastest s | median s | ms a step (fastest) | vs default |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in variants:
        fast = min(times[v])
        print(
            f"| {v} | {lines[v]} | {fast:.2f} | {statistics.median(times[v]):.2f} | "
            f"{1000 * fast / args.steps:.1f} | {100 * (fast / base - 1):+.1f}% |"
        )
        assert torch.equal(weights[v], weights["default"]), f"{v}: other weights"
    print("weights identical across variants: yes")
    for name, micros in report_microseconds().items():
        print(f"{name}: {micros:.1f} us a call")
    for module in ("dvclive", "tqdm", "torch"):
        try:
            print(f"import {module}: {import_seconds(module):.3f} s (fastest of 3, less `pass`)")
        except subprocess.CalledProcessError:
            print(f"import {module}: not installed")
    if "every step + curves" in variants:
        print(f"opening the curves in a training job: {open_curves_seconds():.3f} s (fastest of 3)")


if __name__ == "__main__":
    main()
