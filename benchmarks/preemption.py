"""How fast a pre-empted training job writes its resume state and stops, and what a step-level
state costs: `flyp pretrain` on the embedded benchmark (at --size, a small copy by default) is
sent SIGTERM (or SIGUSR1) in its second epoch; prints the seconds from the signal to the job's
exit, the exit status and the state's size. Then the same run, resumed, and the uninterrupted one
side by side: their checkpoints must be byte-identical.

    PYTHONPATH=. python benchmarks/preemption.py                  # 2000 pretraining images
    PYTHONPATH=. python benchmarks/preemption.py --signal USR1 --pretrain-size 20000

Runs in a temporary folder; the tables are made there first (seconds at the default size).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from flyp.datasets import get_benchmark
from flyp.datasets.manifest import write_manifest


def pretrain_cmd(tables: Path, out: Path, args) -> list[str]:
    return [
        "flyp",
        "pretrain",
        "--benchmark",
        "embedded",
        "--data",
        str(tables),
        "--model",
        "flyp-tiny-rn10t",
        "--epochs",
        "3",
        "--lr",
        "1e-3",
        "--wd",
        "0.1",
        "--batch-size",
        str(args.batch_size),
        "--warmup-steps",
        "10",
        "--seed",
        "0",
        "--out",
        str(out / "pretrained.safetensors"),
        "--log-csv",
        str(out / "log.csv"),
        "--threads",
        str(args.threads),
        "--device",
        "cpu",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--signal", choices=["TERM", "USR1"], default="TERM")
    parser.add_argument(
        "--delay",
        type=float,
        default=2.0,
        help="seconds into the second epoch at which the signal is sent",
    )
    args = parser.parse_args()
    signum = getattr(signal, f"SIG{args.signal}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tables = tmp / "tables"
        sizes = dict(
            seed=0,
            image_size=32,
            pretrain_size=args.pretrain_size,
            train_size=96,
            val_size=200,
            test_size=48,
            ood_size=24,
        )
        bench = get_benchmark("embedded")
        bench.prepare(tables, **sizes)
        write_manifest(tables, bench, sizes)

        straight = tmp / "straight"
        t0 = time.time()
        subprocess.run(pretrain_cmd(tables, straight, args), check=True, capture_output=True)
        whole = time.time() - t0

        out = tmp / "run"
        state = out / ".pretrained.safetensors.resume" / "state.pt"
        proc = subprocess.Popen(
            pretrain_cmd(tables, out, args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        while not state.exists():  # the first epoch's end
            if proc.poll() is not None:
                raise SystemExit(f"the run ended first: {proc.stderr.read()}")
            time.sleep(0.05)
        time.sleep(args.delay)
        sent = time.time()
        proc.send_signal(signum)
        _, err = proc.communicate()
        stopped = time.time() - sent
        saved = torch.load(state, map_location="cpu", weights_only=True)
        size_mb = state.stat().st_size / 1e6

        t0 = time.time()
        subprocess.run(pretrain_cmd(tables, out, args), check=True, capture_output=True)
        resumed = time.time() - t0
        same = (out / "pretrained.safetensors").read_bytes() == (
            straight / "pretrained.safetensors"
        ).read_bytes()

    print(
        f"flyp pretrain, flyp-tiny-rn10t at 32 px, {args.pretrain_size} images, batch "
        f"{args.batch_size}, 3 epochs, {args.threads} thread(s), torch {torch.__version__}"
    )
    print(
        f"SIG{args.signal} {args.delay:g} s into epoch 2: stopped after step "
        f"{saved['step']} of epoch {saved['epoch'] + 1}, exit status {proc.returncode}, "
        f"{stopped:.2f} s from the signal to the exit, state {size_mb:.0f} MB"
    )
    print(f"  its line: {err.strip().splitlines()[-1]}")
    print(
        f"uninterrupted run {whole:.1f} s; the resumed remainder {resumed:.1f} s; "
        f"checkpoints byte-identical: {same}"
    )


if __name__ == "__main__":
    main()
