"""GPU throughput of training, one-pass weight-ensembling evaluation and the data path, for
ViT-B-16-quickgelu (random weights, 224 px). Pure PyTorch + flyp (no Snakemake, no DVC, nothing of
flyp.workflow: the GPU machine has neither):

    PYTHONPATH=. python benchmarks/gpu_speed.py --json-out gpu.json  # on a GPU, everything
    PYTHONPATH=. python benchmarks/gpu_speed.py --dry                # on a CPU: every path, tiny
    PYTHONPATH=. python benchmarks/gpu_speed.py --sections train --configs bf16,bf16+compile

Each compiled config spends its warm-up compiling (minutes, not seconds): to fit a time budget,
narrow ``--sections``, ``--configs`` and ``--batch-sizes``. Every measurement (a section's
method x batch size x config, an evaluation precision, a data-path setting) runs in its own try:
whatever it raises (out of memory, a compiler failure, anything) becomes its row, with the error's
first line, and the run goes on. ``--json-out`` is rewritten after every row, so a run stopped by
a time limit keeps what it measured.

``--dry`` (``--smoke``, its older name): on the CPU, one thread, the fixture ViT
(flyp/model_configs), 32 px, batches 4 and 8, two timed steps, ``torch.compile`` with the eager
backend (dynamo traces, nothing is built): every section and config path in seconds. ``--fail
PATTERN`` makes the rows whose label matches (fnmatch, e.g. ``'train * tf32'``, ``'eval bf16'``)
raise, to check that a failure stays a row.

Sections (``--sections``):

- ``train``: FLYP (both towers, contrastive loss) and FT (image tower + head, cross-entropy)
  steps at each ``--batch-sizes``, images already on the device (the data path apart), for each
  ``--configs``: fp32, tf32 (TF32 matmuls and convolutions), bf16 (autocast, TF32 elsewhere),
  +compile (torch.compile of the towers; skipped, with the reason, where the compiler's backend
  cannot build: no Triton, no C compiler), +gc (gradient checkpointing). Images/s, and model
  FLOPs utilisation: FLOPs of one step (forward and backward, no recomputation) counted by torch's
  FlopCounterMode over the step run on the meta device (shapes only: no memory, no arithmetic),
  over the step time, against the GPU's dense peak for that arithmetic (``--peak-tflops``; known
  for H100 SXM/PCIe/NVL, H200 SXM/NVL and A100 by the device's name; else MFU n/a).
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
import fnmatch
import json
import os
import platform
import re
import shutil
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
from flyp.training import TrainConfig, clip_towers, make_optimizer, speed_up

# Dense peak TFLOPS (no sparsity) by arithmetic, from NVIDIA's data sheets (which quote the
# tensor-core figures with sparsity: halved here), told apart by torch.cuda.get_device_name (an
# H100 SXM names itself "NVIDIA H100 80GB HBM3"; "GH200" is none of these). First match wins.
PEAKS = (
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5}),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    (r"\bH100\b.*\b(SXM|HBM3)", "H100 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    (r"\bH200\b.*\bNVL\b", "H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    (r"\bH200\b", "H200 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    (r"\bA100\b", "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
)
IMAGENET_TEST_IMAGES = 50_000 + 10_000 + 30_000 + 7_500 + 50_889 + 18_574  # val,v2,r,a,sketch,on
META = torch.device("meta")


def gpu_peaks(name: str) -> tuple[str | None, dict | None]:
    """(which GPU, its dense peaks by arithmetic) for a device name; (None, None) if unknown."""
    for pattern, label, peaks in PEAKS:
        if re.search(pattern, name):
            return label, peaks
    return None, None


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def compile_blocker(device: torch.device, backend: str) -> str | None:
    """Why torch.compile cannot build kernels here, found before any config runs (None: it can).
    Inductor builds Triton kernels on CUDA (Triton compiles its launcher with $CC, else gcc or
    clang) and C++ on a CPU ($CXX, else g++ or clang++); other backends build nothing."""
    if backend != "inductor":
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except Exception as e:  # ImportError, or a broken install failing at import
            return f"triton does not import ({one_line(e)})"
        env, found = "CC", ("gcc", "clang")
    else:
        env, found = "CXX", ("g++", "clang++")
    wanted = (os.environ[env],) if os.environ.get(env) else found
    if not any(shutil.which(c) for c in wanted):
        return f"no C compiler to build kernels ({' or '.join(wanted)} not found)"
    return None


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
    """(module, loss(images, tokens, labels)) of a FLYP or an FT step, random weights (on the
    meta device: open_clip's model, built there inside ``with device``, without flyp's uint8
    input hook, which needs real mean and std buffers: ``batch`` gives it float images)."""
    torch.manual_seed(0)
    if device.type == "meta":
        clip = open_clip.create_model(model, device=device)
    else:
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
    """Random uint8 images, tokens and labels of one batch (on the meta device, shapes alone, the
    images float as normalised: FlopCounterMode counts matmuls and convolutions, not the
    normalisation)."""
    context = open_clip.get_model_config(model)["text_cfg"].get("context_length", 77)
    shapes = ((batch_size, 3, size, size), (batch_size, context), (batch_size,))
    if device.type == "meta":
        return tuple(
            torch.empty(shape, dtype=dtype, device=device)
            for shape, dtype in zip(shapes, (torch.float32, torch.long, torch.long), strict=True)
        )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, shapes[0], dtype=torch.uint8, generator=g)
    tokens = torch.randint(1, 1000, shapes[1], generator=g)
    labels = torch.randint(0, 1000, shapes[2], generator=g)
    return images.to(device), tokens.to(device), labels.to(device)


def step_flops(method, model, batch_size, size, device: torch.device = META) -> float:
    """FLOPs of one training step (forward and backward) as torch's FlopCounterMode counts them,
    on the meta device unless told otherwise: the model built and the step run on shapes alone,
    no memory and no arithmetic (a real fp32 step holds every activation: at FLYP batch 512 on
    ViT-B/16 more than an H100 has, before any config is timed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with device:
        module, loss = build(method, model, device)
        images, tokens, labels = batch(model, size, batch_size, device)
        with FlopCounterMode(display=False) as counter:
            loss(images, tokens, labels).backward()
    del module
    return float(counter.get_total_flops())


def time_steps(args, method, batch_size, config, device) -> float:
    """Seconds a training step, after ``args.warmup`` steps (compilation happens there)."""
    module, loss = build(method, args.model, device)
    cfg = TrainConfig(
        epochs=1,
        lr=1e-5,
        wd=0.1,
        batch_size=batch_size,
        warmup_steps=0,
        seed=0,
        tf32=config["tf32"],
        grad_checkpointing=config["grad_checkpointing"],
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config["tf32"]
    speed_up(module, cfg)
    if config["compile"]:  # as speed_up compiles, with the backend asked for
        for tower in clip_towers(getattr(module, "clip", module)):
            tower.compile(backend=args.compile_backend)
    optimizer = make_optimizer(module, cfg.lr, cfg.wd)
    images, tokens, labels = batch(args.model, args.image_size, batch_size, device)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=config["precision"] == "bf16"
    )
    module.train()
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast:
            value = loss(images, tokens, labels)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    sync(device)
    return (time.perf_counter() - start) / args.steps


def free(device: torch.device) -> None:
    """Drop compiled graphs (dynamo's recompile limit) and cached GPU memory between rows."""
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def attempt(args, out, label: str, row: dict, measure) -> dict:
    """``measure()``'s figures (a dict) added to ``row`` and written; whatever it raises, the row
    gets the error's first line instead (``--fail`` patterns raise on purpose), and the run goes
    on. Prints the label and the error, if any; the caller prints figures."""
    try:
        if any(fnmatch.fnmatchcase(label, pattern) for pattern in args.fail):
            raise RuntimeError(f"injected failure (--fail, {label!r})")
        figures = measure()
    except Exception as e:  # OOM, compile errors, anything: one row, then the next config
        figures = {"error": one_line(e)}
        print(f"{label:<34}failed: {figures['error']}", flush=True)
    finally:
        free(args.device)
    out.append({**row, "label": label, **figures})
    return figures


def train_section(args, peaks, out):
    device = args.device
    print(
        f"\n== train steps ({args.model}, {args.image_size} px, {args.steps} timed steps after "
        f"{args.warmup} warm-up) =="
    )
    blocker = None
    if any(parse_config(name)["compile"] for name in args.configs):
        blocker = compile_blocker(device, args.compile_backend)
        if blocker:
            print(f"+compile configs skipped: {blocker}")
    print(f"{'label':<34}{'img/s':>9}{'TFLOP/s':>9}{'MFU':>7}")
    for method in ("flyp", "ft"):
        for batch_size in args.batch_sizes:
            flops = flops_row(args, out, method, batch_size)
            for name in args.configs:
                train_row(args, out, method, batch_size, name, flops, peaks, blocker)


def flops_row(args, out, method: str, batch_size: int) -> float | None:
    """TFLOP of one step of ``method`` at ``batch_size``, counted on the meta device (a row)."""

    def measure():
        flops = step_flops(method, args.model, batch_size, args.image_size)
        return {"step_tflop": flops / 1e12}

    row = {"section": "flops", "method": method, "batch": batch_size}
    return attempt(args, out, f"flops {method} b{batch_size}", row, measure).get("step_tflop")


def train_row(args, out, method, batch_size, name, step_tflop, peaks, blocker) -> None:
    """One method x batch size x config: timed, or skipped (compile blocked), or failed."""
    config = parse_config(name)
    label = f"train {method} b{batch_size} {name}"
    row = {"section": "train", "method": method, "batch": batch_size, "config": name}
    if config["compile"] and blocker:
        out.append({**row, "label": label, "skipped": blocker})
        print(f"{label:<34}skipped: {blocker}", flush=True)
        return
    peak = peaks.get(config["arithmetic"]) if peaks else None

    def measure():
        seconds = time_steps(args, method, batch_size, config, args.device)
        tflops = step_tflop / seconds if step_tflop else None
        return {
            "images_per_s": batch_size / seconds,
            "step_tflop": step_tflop,
            "tflops": tflops,
            "mfu": tflops / peak if tflops and peak else None,
        }

    figures = attempt(args, out, label, row, measure)
    if "error" not in figures:
        tflops, mfu = figures["tflops"], figures["mfu"]
        print(
            f"{label:<34}{figures['images_per_s']:>9.1f}"
            + (f"{tflops:>9.2f}" if tflops else f"{'n/a':>9}")
            + (f"{100 * mfu:>6.1f}%" if mfu else f"{'n/a':>7}"),
            flush=True,
        )


def eval_inputs(args):
    """``args.alphas`` random classifiers on the device and a data set of random uint8 images."""
    torch.manual_seed(0)
    classifiers = []
    for _ in range(args.alphas):
        clip = create_clip(args.model)
        classifiers.append(
            ImageClassifier(clip, nn.Linear(clip.visual.output_dim, 1000)).to(args.device)
        )
    images = torch.randint(
        0,
        256,
        (args.eval_images, 3, args.image_size, args.image_size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(1),
    )
    return classifiers, torch.utils.data.TensorDataset(
        images, torch.zeros(len(images), dtype=torch.long)
    )


def eval_section(args, out):
    print(
        f"\n== one-pass evaluation of {args.alphas} alphas ({args.eval_images} images, "
        f"batch {args.eval_batch}) =="
    )
    inputs, reference = {}, {}
    print(f"{'label':<34}{'img/s (grid)':>14}{'top-1 agrees with fp32':>24}")
    for precision in ("fp32", "tf32", "bf16"):

        def measure(precision=precision):
            if not inputs:
                inputs["classifiers"], inputs["data"] = eval_inputs(args)
            classifiers, data = inputs["classifiers"], inputs["data"]
            device, size = args.device, args.eval_batch
            warm = torch.utils.data.Subset(data, range(min(size, len(data))))
            predict_many(classifiers, warm, batch_size=size, device=device, precision=precision)
            sync(device)
            start = time.perf_counter()
            logits, _ = predict_many(
                classifiers, data, batch_size=size, device=device, precision=precision
            )
            sync(device)
            rate = len(data) / (time.perf_counter() - start)
            top1 = torch.stack([x.argmax(1) for x in logits])
            if precision == "fp32":
                reference["top1"] = top1
            agree = (top1 == reference["top1"]).float().mean().item() if reference else None
            return {"images_per_s": rate, "top1_agreement_with_fp32": agree}

        row = {"section": "eval", "precision": precision, "alphas": args.alphas}
        figures = attempt(args, out, f"eval {precision}", row, measure)
        if "error" not in figures:
            rate, agree = figures["images_per_s"], figures["top1_agreement_with_fp32"]
            agrees = f"{100 * agree:>23.2f}%" if agree is not None else f"{'n/a':>24}"
            print(f"{'eval ' + precision:<34}{rate:>14.1f}{agrees}", flush=True)
            print(
                f"          arithmetic: the six ImageNet test sets ({IMAGENET_TEST_IMAGES} "
                f"images) at this rate: {IMAGENET_TEST_IMAGES / rate / 60:.1f} min"
            )


def data_section(args, out):
    device = args.device
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
        print(
            f"\n== data path: {args.data_images} JPEGs 400x350 q90 -> {device} "
            f"(batch {args.data_batch}, {os.cpu_count()} CPUs) =="
        )
        table = jpeg_table(Path(tmp), args.data_images)
        print(f"{'label':<34}{'old img/s':>11}{'new img/s':>11}{'ratio':>8}")
        for name in ("train", "eval"):
            for workers in args.workers:

                def measure(name=name, workers=workers):
                    rates = [
                        images_per_second(
                            table,
                            t[name],
                            workers,
                            normalise,
                            args.data_batch,
                            device=device,
                            shuffle=True,
                        )
                        for t, normalise in ((old, False), (new, True))
                    ]
                    return {"old_images_per_s": rates[0], "new_images_per_s": rates[1]}

                label = f"data {name} w{workers}"
                row = {"section": "data", "transform": name, "workers": workers}
                figures = attempt(args, out, label, row, measure)
                if "error" not in figures:
                    before, after = figures["old_images_per_s"], figures["new_images_per_s"]
                    print(f"{label:<34}{before:>11.1f}{after:>11.1f}{after / before:>8.2f}")
        workers = max(args.workers)
        figures = attempt(
            args,
            out,
            "data end-to-end",
            {"section": "data", "workers": workers},
            lambda: {"end_to_end_flyp_bf16_images_per_s": end_to_end(args, table, new, workers)},
        )
        if "error" not in figures:
            rate = figures["end_to_end_flyp_bf16_images_per_s"]
            print(f"end to end: uint8 train path, {workers} workers, bf16 FLYP steps: {rate:.1f}")


def end_to_end(args, table, new, workers) -> float:
    """Images/s of the uint8 train path feeding bf16 FLYP steps."""
    device = args.device
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

    return images_per_second(
        table,
        new["train"],
        workers,
        True,
        args.data_batch,
        device=device,
        shuffle=True,
        consume=train_step,
    )


# --dry: the CPU, the fixture ViT, tiny sizes; compile traced by dynamo, run eagerly.
DRY = {
    "device": "cpu",
    "model": "flyp-fixture-vit",
    "image_size": 32,
    "batch_sizes": "4,8",
    "steps": 2,
    "warmup": 1,
    "alphas": 3,
    "eval_images": 32,
    "eval_batch": 16,
    "data_images": 24,
    "data_batch": 8,
    "workers": "0,1",
    "compile_backend": "eager",
    "threads": 1,  # tiny ops: more threads only contend, the more so on a shared machine
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry",
        "--smoke",
        action="store_true",
        help="CPU, fixture ViT, tiny sizes, eager compile: checks every path runs, in seconds",
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--model", default="ViT-B-16-quickgelu")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sections", default="train,eval,data")
    parser.add_argument("--batch-sizes", default="256,512")
    parser.add_argument("--configs", default="fp32,tf32,bf16,bf16+compile,bf16+gc")
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--alphas", type=int, default=11)
    parser.add_argument("--eval-images", type=int, default=4096)
    parser.add_argument("--eval-batch", type=int, default=512)
    parser.add_argument("--data-images", type=int, default=3000)
    parser.add_argument("--data-batch", type=int, default=256)
    parser.add_argument("--workers", default=f"0,{max(1, (os.cpu_count() or 2) - 1)}")
    parser.add_argument("--peak-tflops", help="fp32,tf32,bf16 dense peaks, if not a known GPU")
    parser.add_argument("--fail", default="", help="rows (fnmatch of labels) that raise: tests")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.dry:  # tiny sizes, where the command line did not say otherwise
        for key, value in DRY.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    args.compile_backend = args.compile_backend or "inductor"
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.configs = args.configs.split(",")
    for name in args.configs:
        parse_config(name)  # an unknown config stops the run before anything is timed
    args.workers = [int(w) for w in args.workers.split(",")]
    args.fail = [pattern for pattern in args.fail.split(",") if pattern]
    args.device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    began = time.perf_counter()
    args = parse_args()
    device = args.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    gpu, peaks = gpu_peaks(name)
    if args.peak_tflops:
        gpu, peaks = (
            "--peak-tflops",
            dict(
                zip(("fp32", "tf32", "bf16"), map(float, args.peak_tflops.split(",")), strict=True)
            ),
        )
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {device} {name or platform.machine()}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs; peaks: "
        + (f"{gpu} {peaks}" if peaks else "unknown GPU, MFU n/a")
    )
    out = Figures(args.json_out, name, gpu)
    sections = args.sections.split(",")
    if "train" in sections:
        train_section(args, peaks, out)
    if "eval" in sections:
        eval_section(args, out)
    if "data" in sections:
        data_section(args, out)
    failed = sum("error" in row for row in out)
    skipped = sum("skipped" in row for row in out)
    seconds = time.perf_counter() - began
    print(f"\n{len(out)} rows, {failed} failed, {skipped} skipped in {seconds:.0f} s")


class Figures(list):
    """The figures measured so far, rewritten to ``path`` (if any) after each one, through a
    temporary file (a run killed mid-write leaves the previous version whole)."""

    def __init__(self, path: Path | None, device: str, gpu: str | None):
        super().__init__()
        self.path, self.device, self.gpu = path, device, gpu

    def append(self, row: dict) -> None:
        super().append(row)
        if self.path:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(
                json.dumps({"device": self.device, "peaks_of": self.gpu, "results": self}, indent=1)
            )
            tmp.replace(self.path)


if __name__ == "__main__":
    main()
