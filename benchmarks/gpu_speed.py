"""GPU throughput of training, one-pass weight-ensembling evaluation and the data path, for
ViT-B-16-quickgelu (random weights, 224 px). Pure PyTorch + flyp (no Snakemake, no DVC):

    PYTHONPATH=. python benchmarks/gpu_speed.py --json-out gpu.json  # on a GPU, everything
    PYTHONPATH=. python benchmarks/gpu_speed.py --smoke              # on a CPU: every path, tiny
    PYTHONPATH=. python benchmarks/gpu_speed.py --sections train --configs bf16,bf16+compile

Not yet timed on a GPU. Each compiled config spends its warm-up compiling (minutes, not seconds):
to fit a time budget, narrow ``--sections``, ``--configs`` and ``--batch-sizes``. ``--json-out``
is rewritten after every figure, so a run stopped by a time limit keeps what it measured.

Sections (``--sections``):

- ``train``: FLYP (both towers, contrastive loss) and FT (image tower + head, cross-entropy)
  steps at each ``--batch-sizes``, images already on the device (the data path apart), for each
  ``--configs``: fp32, tf32 (TF32 matmuls and convolutions), bf16 (autocast, TF32 elsewhere),
  +compile (torch.compile of the towers), +gc (gradient checkpointing). Images/s, and model
  FLOPs utilisation: FLOPs of one step counted by torch's FlopCounterMode over the step time,
  against the GPU's dense peak for that arithmetic (``--peak-tflops``; known for H100/H200).
- ``eval``: the 11-alpha grid evaluated in one pass (``flyp.scoring.predict_many``: 11 models see
  each batch) in fp32, tf32 and bf16: images/s through the whole grid, and the minutes the six
  ImageNet test sets (about 177,000 images) would take at that rate (arithmetic, printed as such).
- ``data``: generated 400x350 JPEGs (quality 90) through ``flyp.loading.make_loader`` with each
  ``--workers`` count, pinned and copied to the device, the old float32 path against the uint8
  path normalised on the device, for the train and the eval transform; then the uint8 train path
  feeding bf16 FLYP steps (end to end).

``--json-out FILE`` also writes every figure. Nothing is estimated: each number printed is timed
here, except the line marked as arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from data_path import (  # this script's folder is on the path
    images_per_second,
    jpeg_table,
    old_transforms,
    sync,
)
from torch import nn

from flyp.methods.ft import freeze_text_tower
from flyp.models import ImageClassifier, create_clip, preprocess_transforms
from flyp.scoring import predict_many
from flyp.training import TrainConfig, make_optimizer, speed_up

# Dense peak TFLOPS (no sparsity) by arithmetic, from NVIDIA's H100/H200 SXM data sheets.
PEAKS = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
}
IMAGENET_TEST_IMAGES = 50_000 + 10_000 + 30_000 + 7_500 + 50_889 + 18_574  # val,v2,r,a,sketch,on


def parse_config(name: str) -> dict:
    """``bf16+compile+gc`` -> precision, tf32, compile, grad_checkpointing."""
    base, *extras = name.split("+")
    if base not in ("fp32", "tf32", "bf16") or set(extras) - {"compile", "gc"}:
        raise SystemExit(f"--configs: unknown config {name!r}")
    return {
        "precision": "bf16" if base == "bf16" else "fp32",
        "tf32": base != "fp32",
        "compile": "compile" in extras,
        "grad_checkpointing": "gc" in extras,
        "arithmetic": base,
    }


def build(method: str, model: str, device: torch.device):
    """(module, loss(images, tokens, labels)) of a FLYP or an FT step, random weights."""
    torch.manual_seed(0)
    clip = create_clip(model).to(device)
    if method == "flyp":
        clip_loss = open_clip.ClipLoss()

        def loss(images, tokens, labels):
            image_features, text_features, scale = clip(images, tokens)[:3]
            return clip_loss(image_features, text_features, scale)

        return clip, loss
    freeze_text_tower(clip)
    n_classes = 1000
    classifier = ImageClassifier(clip, nn.Linear(clip.visual.output_dim, n_classes).to(device))

    def loss(images, tokens, labels):
        return F.cross_entropy(classifier(images), labels)

    return classifier, loss


def batch(model: str, size: int, batch_size: int, device: torch.device):
    context = open_clip.get_model_config(model)["text_cfg"].get("context_length", 77)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=g)
    tokens = torch.randint(1, 1000, (batch_size, context), generator=g)
    labels = torch.randint(0, 1000, (batch_size,), generator=g)
    return images.to(device), tokens.to(device), labels.to(device)


def step_flops(method, model, batch_size, size, device) -> float:
    """FLOPs of one training step (forward and backward) as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    module, loss = build(method, model, device)
    images, tokens, labels = batch(model, size, batch_size, device)
    with FlopCounterMode(display=False) as counter:
        loss(images, tokens, labels).backward()
    del module
    return float(counter.get_total_flops())


def time_steps(method, model, batch_size, size, config, steps, warmup, device) -> float:
    """Seconds a training step, after ``warmup`` steps (compilation happens there)."""
    module, loss = build(method, model, device)
    cfg = TrainConfig(
        epochs=1,
        lr=1e-5,
        wd=0.1,
        batch_size=batch_size,
        warmup_steps=0,
        seed=0,
        tf32=config["tf32"],
        compile=config["compile"],
        grad_checkpointing=config["grad_checkpointing"],
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config["tf32"]
    speed_up(module, cfg)
    optimizer = make_optimizer(module, cfg.lr, cfg.wd)
    images, tokens, labels = batch(model, size, batch_size, device)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=config["precision"] == "bf16"
    )
    module.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        with autocast:
            value = loss(images, tokens, labels)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def train_section(args, device, peaks, out):
    print(
        f"\n== train steps ({args.model}, {args.image_size} px, {args.steps} timed steps after "
        f"{args.warmup} warm-up) =="
    )
    print(f"{'method':<6}{'batch':>6}  {'config':<18}{'img/s':>9}{'TFLOP/s':>9}{'MFU':>7}")
    for method in ("flyp", "ft"):
        for batch_size in args.batch_sizes:
            flops = step_flops(method, args.model, batch_size, args.image_size, device)
            for name in args.configs:
                config = parse_config(name)
                try:
                    seconds = time_steps(
                        method,
                        args.model,
                        batch_size,
                        args.image_size,
                        config,
                        args.steps,
                        args.warmup,
                        device,
                    )
                except torch.cuda.OutOfMemoryError:
                    print(f"{method:<6}{batch_size:>6}  {name:<18}{'out of memory':>25}")
                    torch.cuda.empty_cache()
                    continue
                tflops = flops / seconds / 1e12
                peak = peaks.get(config["arithmetic"]) if peaks else None
                mfu = f"{100 * tflops / peak:6.1f}%" if peak else "   n/a"
                print(
                    f"{method:<6}{batch_size:>6}  {name:<18}{batch_size / seconds:>9.1f}"
                    f"{tflops:>9.2f}{mfu:>7}",
                    flush=True,
                )
                out.append(
                    {
                        "section": "train",
                        "method": method,
                        "batch": batch_size,
                        "config": name,
                        "images_per_s": batch_size / seconds,
                        "step_tflop": flops / 1e12,
                        "tflops": tflops,
                        "mfu": tflops / peak if peak else None,
                    }
                )
                if config["compile"]:  # free its graphs; stay under dynamo's recompile limit
                    torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def eval_section(args, device, out):
    print(
        f"\n== one-pass evaluation of {args.alphas} alphas ({args.eval_images} images, "
        f"batch {args.eval_batch}) =="
    )
    torch.manual_seed(0)
    classifiers = []
    for _ in range(args.alphas):
        clip = create_clip(args.model)
        classifiers.append(
            ImageClassifier(clip, nn.Linear(clip.visual.output_dim, 1000)).to(device)
        )
    images = torch.randint(
        0,
        256,
        (args.eval_images, 3, args.image_size, args.image_size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(1),
    )
    data = torch.utils.data.TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    reference = None
    print(f"{'precision':<10}{'img/s (grid)':>14}{'top-1 agrees with fp32':>24}")
    for precision in ("fp32", "tf32", "bf16"):
        predict_many(
            classifiers,
            torch.utils.data.Subset(data, range(args.eval_batch)),
            batch_size=args.eval_batch,
            device=device,
            precision=precision,
        )  # warm-up
        sync(device)
        start = time.perf_counter()
        logits, _ = predict_many(
            classifiers, data, batch_size=args.eval_batch, device=device, precision=precision
        )
        sync(device)
        rate = len(images) / (time.perf_counter() - start)
        top1 = torch.stack([x.argmax(1) for x in logits])
        reference = top1 if reference is None else reference
        agree = (top1 == reference).float().mean().item()
        print(f"{precision:<10}{rate:>14.1f}{100 * agree:>23.2f}%", flush=True)
        out.append(
            {
                "section": "eval",
                "precision": precision,
                "alphas": args.alphas,
                "images_per_s": rate,
                "top1_agreement_with_fp32": agree,
            }
        )
        print(
            f"          arithmetic: the six ImageNet test sets ({IMAGENET_TEST_IMAGES} images) "
            f"at this rate: {IMAGENET_TEST_IMAGES / rate / 60:.1f} min"
        )


def data_section(args, device, out):
    cfg = {
        "size": args.image_size,
        "mode": "RGB",
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }
    old = dict(zip(("train", "eval"), old_transforms(cfg), strict=True))
    new = dict(zip(("train", "eval"), preprocess_transforms(cfg), strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        table = jpeg_table(Path(tmp), args.data_images)
        print(
            f"\n== data path: {args.data_images} JPEGs 400x350 q90 -> {device} "
            f"(batch {args.data_batch}, {os.cpu_count()} CPUs) =="
        )
        print(f"{'transform':<10}{'workers':>8}{'old img/s':>11}{'new img/s':>11}{'ratio':>8}")
        for name in ("train", "eval"):
            for workers in args.workers:
                before = images_per_second(
                    table, old[name], workers, False, args.data_batch, device=device, shuffle=True
                )
                after = images_per_second(
                    table, new[name], workers, True, args.data_batch, device=device, shuffle=True
                )
                print(
                    f"{name:<10}{workers:>8}{before:>11.1f}{after:>11.1f}{after / before:>8.2f}",
                    flush=True,
                )
                out.append(
                    {
                        "section": "data",
                        "transform": name,
                        "workers": workers,
                        "old_images_per_s": before,
                        "new_images_per_s": after,
                    }
                )
        module, loss = build("flyp", args.model, device)
        optimizer = make_optimizer(module, 1e-5, 0.1)
        tokens = batch(args.model, args.image_size, args.data_batch, device)[1]
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)

        def train_step(images, labels):
            with autocast:
                value = loss(images, tokens[: len(images)], labels)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()

        workers = max(args.workers)
        rate = images_per_second(
            table,
            new["train"],
            workers,
            True,
            args.data_batch,
            device=device,
            shuffle=True,
            consume=train_step,
        )
        print(
            f"end to end: uint8 train path, {workers} workers, bf16 FLYP steps: {rate:.1f} img/s",
            flush=True,
        )
        out.append(
            {"section": "data", "end_to_end_flyp_bf16_images_per_s": rate, "workers": workers}
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="CPU, tiny ViT, tiny sizes: checks every path runs"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="ViT-B-16-quickgelu")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sections", default="train,eval,data")
    parser.add_argument("--batch-sizes", default="256,512")
    parser.add_argument("--configs", default="fp32,tf32,bf16,bf16+compile,bf16+gc")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--alphas", type=int, default=11)
    parser.add_argument("--eval-images", type=int, default=4096)
    parser.add_argument("--eval-batch", type=int, default=512)
    parser.add_argument("--data-images", type=int, default=3000)
    parser.add_argument("--data-batch", type=int, default=256)
    parser.add_argument("--workers", default=f"0,{max(1, (os.cpu_count() or 2) - 1)}")
    parser.add_argument("--peak-tflops", help="fp32,tf32,bf16 dense peaks, if not an H100/H200")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.smoke:
        args.device, args.model, args.image_size = "cpu", "flyp-fixture-vit", 32
        args.batch_sizes, args.steps, args.warmup = "8", 2, 1
        args.eval_images, args.eval_batch, args.data_images, args.data_batch = 64, 16, 48, 16
        args.workers = "0,1"
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.configs = args.configs.split(",")
    args.workers = [int(w) for w in args.workers.split(",")]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    peaks = next((p for key, p in PEAKS.items() if key in name), None)
    if args.peak_tflops:
        peaks = dict(
            zip(("fp32", "tf32", "bf16"), map(float, args.peak_tflops.split(",")), strict=True)
        )
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {device} {name or platform.machine()}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    out = Figures(args.json_out, name)
    sections = args.sections.split(",")
    if "train" in sections:
        train_section(args, device, peaks, out)
    if "eval" in sections:
        eval_section(args, device, out)
    if "data" in sections:
        data_section(args, device, out)


class Figures(list):
    """The figures measured so far, rewritten to ``path`` (if any) after each one."""

    def __init__(self, path: Path | None, device: str):
        super().__init__()
        self.path, self.device = path, device

    def append(self, row: dict) -> None:
        super().append(row)
        if self.path:
            self.path.write_text(json.dumps({"device": self.device, "results": self}, indent=1))


if __name__ == "__main__":
    main()
