"""Peak memory of building the zero-shot head as the class count grows.

Builds the head with the real ViT-B-16 text tower (random weights: only shapes matter) for C
classes x 80 templates (open_clip's OPENAI_IMAGENET_TEMPLATES, ImageNet class names) and prints
the peak memory of the call for each C and the ratio between the largest and the smallest C. The
head encodes a fixed number of prompts per forward, so the ratio should stay at most 1.1.

How memory is measured (--device):

- ``meta`` (seconds, any machine): the call runs on PyTorch's meta device, where every op
  produces tensors with their real shapes and lifetimes but does no arithmetic. A
  TorchDispatchMode adds up the bytes of the storages that ops allocate while they are alive and
  keeps the peak: the tensor memory the call would allocate on a real device (allocator caching and
  kernels' internal scratch space aside). ``--old`` also traces the previous code, open_clip's
  ``build_zero_shot_classifier(num_classes_per_batch=None)``: all prompts in one forward.
- ``cpu``: a real run. Prints the same tensor count and the increase of the process's peak
  resident set during the call (Linux's VmHWM, reset just before the call by writing 5 to
  /proc/self/clear_refs, so nothing between two samples is missed). Run it with
  MALLOC_MMAP_THRESHOLD_=65536 so that glibc hands freed tensors back at once and the resident
  set follows the live tensors (its adaptive threshold keeps freed blocks resident). The ViT-B/16
  text tower takes 0.1-0.2 s a prompt on 2 CPU cores: 400 x 80 prompts would take over an hour,
  so scale a CPU run down with --templates and --prompts-per-forward (keep the smallest C x
  templates above the budget, or the smallest run uses a smaller forward than the others).
- ``cuda``: a real run; ``torch.cuda.max_memory_allocated`` above what was allocated before.

    python benchmarks/zeroshot_head_memory.py --device meta --old
    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/zeroshot_head_memory.py --device cpu \\
        --classes 50,400 --templates 1 --prompts-per-forward 25
"""

from __future__ import annotations

import argparse
import logging
import re
import time
import weakref

import open_clip
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from flyp.models import PROMPTS_PER_FORWARD, build_zero_shot_head

MODEL = "ViT-B-16-quickgelu"
MIB = 2**20


class TensorBytes(TorchDispatchMode):
    """Live and peak bytes of the storages that ops allocate while the mode is on (on any device,
    meta included). A storage is counted once however many views share it, and freed when Python
    releases its last reference; storages made before the mode (parameters) are not counted. The
    approach of torch.distributed._tools.mem_tracker, whose MemTracker refuses a module called more
    than once."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def _free(self, nbytes: int, _ref) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_leaves((args, kwargs)):
            # An input's storage is either counted already or was allocated before the mode (a
            # parameter): an op that returns a view of it (weight.t()) allocates nothing.
            if isinstance(t, torch.Tensor) and t.untyped_storage() not in self._seen:
                self._seen[t.untyped_storage()] = None
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen[storage] = weakref.ref(storage, lambda r, n=nbytes: self._free(n, r))
                    self.live += nbytes
        self.peak = max(self.peak, self.live)
        return out


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


@torch.no_grad()
def old_head(clip, tokenizer, classnames, templates) -> torch.Tensor:
    """The previous code: every class x template prompt in one text-tower forward."""
    device = next(clip.parameters()).device
    weights = open_clip.build_zero_shot_classifier(
        clip, tokenizer, classnames, templates, num_classes_per_batch=None, device=device
    )
    return weights.T * clip.logit_scale.exp()  # (C, D)


def measure(build, device: str) -> dict:
    """Run ``build()`` once and return its peak memory (MiB) by each available measure."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    if device == "cpu":
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        rss_before = _proc_kib("VmRSS")
    tracker = TensorBytes()
    t0 = time.perf_counter()
    with tracker:
        build()
    result = {"tensors_mib": tracker.peak / MIB, "seconds": time.perf_counter() - t0}
    if device == "cpu":
        result["rss_mib"] = (_proc_kib("VmHWM") - rss_before) / 1024
    if device == "cuda":
        torch.cuda.synchronize()
        result["cuda_mib"] = (torch.cuda.max_memory_allocated() - before) / MIB
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="meta", choices=["meta", "cpu", "cuda"])
    p.add_argument("--classes", default="50,100,200,400", help="Comma-separated class counts.")
    p.add_argument(
        "--templates",
        type=int,
        default=80,
        help="The first N of open_clip's 80 ImageNet templates.",
    )
    p.add_argument("--prompts-per-forward", type=int, default=PROMPTS_PER_FORWARD)
    p.add_argument(
        "--old", action="store_true", help="Also measure the previous single-forward code."
    )
    p.add_argument("--threads", type=int, default=0, help="Torch CPU threads (0: default).")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    logging.getLogger().setLevel(logging.ERROR)  # "No pretrained weights loaded": intended
    clip = open_clip.create_model(MODEL).eval()
    del clip.visual  # only the text tower is used
    clip = clip.to(args.device)
    tokenizer = open_clip.get_tokenizer(MODEL)
    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES][: args.templates]
    counts = [int(c) for c in args.classes.split(",")]

    variants = {
        "batched": lambda names: build_zero_shot_head(
            clip, tokenizer, names, templates, prompts_per_forward=args.prompts_per_forward
        )
    }
    if args.old:
        variants["old (one forward)"] = lambda names: old_head(clip, tokenizer, names, templates)

    print(
        f"model {MODEL} text tower (random weights), device {args.device}, "
        f"{len(templates)} templates, {args.prompts_per_forward} prompts per forward"
    )
    columns = ["tensors_mib"] + {"cpu": ["rss_mib"], "cuda": ["cuda_mib"]}.get(args.device, [])
    print(
        f"{'code':18} {'classes':>7} {'prompts':>7} "
        + " ".join(f"{'peak ' + c[:-4] + ' MiB':>17}" for c in columns)
        + f" {'seconds':>8}"
    )
    # One forward before measuring: the first one also sets up thread pools, kernels' workspaces
    # and the tokenizer's caches, which are not the head's memory.
    first = -(-args.prompts_per_forward // len(templates))  # classes that fill one forward
    build_zero_shot_head(
        clip,
        tokenizer,
        list(open_clip.IMAGENET_CLASSNAMES[:first]),
        templates,
        prompts_per_forward=args.prompts_per_forward,
    )
    for name, build in variants.items():
        peaks = {}
        for c in counts:
            names = list(open_clip.IMAGENET_CLASSNAMES[:c])
            r = measure(lambda b=build, n=names: b(n), args.device)
            peaks[c] = r
            print(
                f"{name:18} {c:7d} {c * len(templates):7d} "
                + " ".join(f"{r[col]:17.1f}" for col in columns)
                + f" {r['seconds']:8.1f}"
            )
        lo, hi = min(counts), max(counts)
        print(
            f"{name:18} ratio {hi}/{lo} classes: "
            + ", ".join(f"{col[:-4]} {peaks[hi][col] / peaks[lo][col]:.3f}" for col in columns)
        )


if __name__ == "__main__":
    main()
