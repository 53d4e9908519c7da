"""What ``runtime.deterministic`` (``--deterministic``: deterministic kernels,
``flyp.devices.use_deterministic_algorithms``) costs, and whether it changes a number, side by side
in one process: FLYP steps on the embedded benchmark's model (flyp-tiny-rn10t, 32 px, its
finetuning batch 128, AdamW, gradients clipped at 1.0; random images and captions), and a zero-shot
head built by ``flyp.models.build_zero_shot_head`` (its ``index_add_`` is what CUDA runs with
atomic adds), with deterministic kernels off and on, alternating ``--repeats`` times.

    PYTHONPATH=. python benchmarks/determinism.py                # the CPU, 1 thread
    PYTHONPATH=. python benchmarks/determinism.py --device cuda  # a GPU (set before CUDA starts)

Prints the best seconds per step (and per head) of each mode, their ratio, and whether the weights
after the steps (and the heads) of every run are bitwise equal: across repeats of a mode (is it
reproducible?) and across the modes (does the switch change the numbers?).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import open_clip
import torch

from flyp.devices import CUBLAS_WORKSPACE
from flyp.models import build_zero_shot_head, create_clip
from flyp.training import make_optimizer, optimizer_step

MODEL = "flyp-tiny-rn10t"


def digest(tensors) -> str:
    """A hash of the tensors' bytes: equal digests, bitwise equal tensors."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(args, device: torch.device) -> tuple[float, str]:
    """(seconds a step after two warm-up steps, digest of the weights after every step)."""
    torch.manual_seed(0)
    clip = create_clip(MODEL).to(device)
    loss_fn = open_clip.ClipLoss()
    optimizer = make_optimizer(clip, 1e-4, 0.1, decay="matrices")
    context = open_clip.get_model_config(MODEL)["text_cfg"].get("context_length", 77)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    tokens = torch.randint(1, 1000, (args.batch, context), generator=g)
    images, tokens = images.to(device), tokens.to(device)
    clip.train()
    for i in range(2 + args.steps):
        if i == 2:
            sync(device)
            start = time.perf_counter()
        image_features, text_features, scale = clip(images, tokens)[:3]
        optimizer_step(loss_fn(image_features, text_features, scale), clip, optimizer, 1.0)
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    return seconds, digest(clip.state_dict().values())


def head(args, device: torch.device) -> tuple[float, str]:
    """(seconds to build a zero-shot head of ``--classes`` classes x 18 templates, its digest)."""
    torch.manual_seed(0)
    clip = create_clip(MODEL).to(device)
    tokenizer = open_clip.get_tokenizer(MODEL)
    classes = [f"class {i}" for i in range(args.classes)]
    templates = [f"a photo number {j} of a {{}}." for j in range(18)]
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        linear = build_zero_shot_head(clip, tokenizer, classes, templates)
    sync(device)
    return time.perf_counter() - start, digest([linear.weight])


def set_mode(on: bool) -> None:
    torch.use_deterministic_algorithms(on, warn_only=False)
    torch.backends.cudnn.benchmark = not on and torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # before CUDA starts
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); {MODEL} 32 px, batch {args.batch}, "
        f"{args.steps} timed steps; head {args.classes} classes x 18 templates"
    )
    runs = {False: [], True: []}
    for _ in range(args.repeats):
        for on in (False, True):
            set_mode(on)
            runs[on].append((*train_steps(args, device), *head(args, device)))
    set_mode(False)
    best = {on: [min(r[i] for r in runs[on]) for i in (0, 2)] for on in runs}
    print(f"{'deterministic':<15}{'s/step':>10}{'s/head':>10}  weights digest    head digest")
    for on in (False, True):
        digests = {(r[1], r[3]) for r in runs[on]}
        shown = ", ".join(f"{w} {h}" for w, h in sorted(digests))
        print(f"{str(on).lower():<15}{best[on][0]:>10.4f}{best[on][1]:>10.4f}  {shown}")
    ratio = [best[True][i] / best[False][i] for i in (0, 1)]
    print(f"{'on / off':<15}{ratio[0]:>10.3f}{ratio[1]:>10.3f}")
    same_runs = all(len({(r[1], r[3]) for r in runs[on]}) == 1 for on in runs)
    same_modes = {(r[1], r[3]) for r in runs[False]} == {(r[1], r[3]) for r in runs[True]}
    print(f"each mode bitwise reproducible over {args.repeats} runs: {same_runs}")
    print(f"on and off bitwise equal: {same_modes}")


if __name__ == "__main__":
    main()
