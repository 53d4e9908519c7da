"""FLYP step throughput on 1 and N ranks (DDP, the contrastive loss gathered over the ranks), side
by side, with the scaling efficiency: images/s on N ranks / (N x images/s on 1 rank). Each rank
keeps its batch (weak scaling, e.g. 512 per GPU as in the GPU command below), so the global
batch grows with the ranks. Pure PyTorch + flyp (no Snakemake):

    PYTHONPATH=. python benchmarks/ddp_speed.py                    # CPU: 1 and 2 ranks over gloo
    PYTHONPATH=. python benchmarks/ddp_speed.py --device cuda --ranks 1,2,4,8 \
        --model ViT-B-16-quickgelu --image-size 224 --batch-per-rank 512   # GPUs: NCCL

Every rank is a process started here as torchrun would start it (its environment: RANK,
WORLD_SIZE, ...), joined by ``flyp.distributed.process_group`` (gloo on the CPU, NCCL on GPUs, a
GPU each), and steps as ``flyp.training.fit`` does: the loss from ``step_loss`` (the task's loss,
wrapped in DistributedDataParallel over several ranks), AdamW from ``make_optimizer``, the FLYP
loss of ``flyp.contrastive.ContrastiveTask`` (open_clip's ClipLoss gathering every rank's
features). Random weights and a fixed batch of random uint8 images and tokens already in memory:
the data path apart (``benchmarks/data_path.py`` times it). On the CPU each rank gets
``--threads`` cores, so N ranks use N times the cores of one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
import warnings
from pathlib import Path

import open_clip
import torch
import torch.multiprocessing as mp

from flyp import distributed
from flyp.contrastive import ContrastiveTask
from flyp.models import create_clip
from flyp.training import make_optimizer, optimizer_step, step_loss


class FixedBatchFlyp(ContrastiveTask):
    """FLYP's contrastive task on a batch given as (uint8 images, caption tokens)."""

    def captions(self, batch):
        return batch


def global_batch(model: str, size: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random images and tokens on every rank (each takes its slice, as in training)."""
    context = open_clip.get_model_config(model)["text_cfg"].get("context_length", 77)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (rows, 3, size, size), dtype=torch.uint8, generator=g)
    tokens = torch.randint(1, 1000, (rows, context), generator=g)
    return images, tokens


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    distributed.barrier()


def rank_main(rank: int, world: int, port: int, args, out: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(args.threads)
    # open_clip's gathering calls torch.distributed.nn.all_gather, which torch calls deprecated
    warnings.filterwarnings("ignore", category=FutureWarning, module="open_clip")
    with distributed.process_group(args.device) as device:
        torch.manual_seed(0)
        task = FixedBatchFlyp(create_clip(args.model).to(device), args.model, device)
        task.module.train()
        images, tokens = global_batch(args.model, args.image_size, args.batch_per_rank * world)
        batch = tuple(distributed.local_rows(t).to(device) for t in (images, tokens))
        compute_loss = step_loss(task)
        optimizer = make_optimizer(task.module, lr=1e-5, wd=0.1)

        def step() -> None:
            optimizer_step(compute_loss(batch), task.module, optimizer)

        for _ in range(args.warmup):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        seconds = time.perf_counter() - start
        if distributed.is_main():
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            out.write_text(
                json.dumps(
                    {
                        "seconds": seconds,
                        "device": name,
                        "backend": "nccl" if device.type == "cuda" else "gloo",
                    }
                )
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, args) -> dict:
    """Images/s of the whole run (all ranks) over ``args.steps`` timed steps."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        mp.spawn(rank_main, args=(world, free_port(), args, out), nprocs=world)
        result = json.loads(out.read_text())
    images = args.steps * args.batch_per_rank * world
    return {
        "ranks": world,
        "global_batch": args.batch_per_rank * world,
        "images_per_s": images / result["seconds"],
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (gloo), or cuda / auto (NCCL)")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts; 1 first")
    parser.add_argument("--model", default="flyp-tiny-rn10t")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-per-rank", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    if ranks[0] != 1:
        raise SystemExit("--ranks: start with 1 (the baseline of the scaling efficiency)")

    rows = [measure(world, args) for world in ranks]
    base = rows[0]["images_per_s"]
    for row in rows:
        row["efficiency"] = row["images_per_s"] / (row["ranks"] * base)
    print(
        f"FLYP step throughput: {args.model} at {args.image_size} px, {args.batch_per_rank} "
        f"images per rank, {rows[0]['backend']} on {rows[0]['device']} "
        f"({args.threads} thread(s) per rank; {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{args.steps} steps after {args.warmup}"
    )
    print(f"{'ranks':>5}  {'global batch':>12}  {'images/s':>9}  {'scaling efficiency':>18}")
    for row in rows:
        print(
            f"{row['ranks']:>5}  {row['global_batch']:>12}  {row['images_per_s']:>9.1f}  "
            f"{row['efficiency']:>18.2f}"
        )
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
