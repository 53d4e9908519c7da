"""A job's peak GPU memory, estimated before it allocates anything (`flyp plan`, the pre-flight
check of training and evaluation jobs on CUDA).

The model is built on PyTorch's meta device (its open_clip config, no weights: shapes without
storage) and one training step of the method is traced on meta tensors: forward and loss under
``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor autograd keeps for backward,
counted once per storage and without the parameters. The peak is then

    weights + gradients (trainable) + AdamW's exp_avg and exp_avg_sq (2 x trainable)
    + L2-SP's copy of the pretrained image tower + saved activations + margin,

all fp32 but the activations (bf16 autocast: ``_Autocast``). Gradient checkpointing (open_clip's,
one checkpoint per transformer block) is read off the same trace: each block then keeps only its
input, and backward recomputes one block at a time, so the activations are those outside the
blocks, every block's input and the largest block's own. A method that does not train (zero-shot,
the linear probe) and evaluation run without gradients: the weights, one block's working set at
the evaluation batch, and for evaluation the weight-ensembling models of one pass
(``flyp.ensemble.ENSEMBLE_BYTES``).

The margin, ``MARGIN_FRACTION`` of the rest plus ``MARGIN_BYTES``, stands for what the trace does
not see: the CUDA context and cuBLAS/cuDNN workspaces (about 0.5-1 GiB), the allocator's
fragmentation, the gradients of activations alive during backward, and the optimizer's
temporaries. The trace errs high on attention: on meta (and CPU) PyTorch's attention saves its
(heads, L, L) probabilities, which CUDA's fused kernels do not keep (for ViT-B/16 at 224 px, 21 of
176 MiB an image in fp32).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from flyp.io import UserError

GIB = 1 << 30
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 1 * GIB
EVAL_BATCH = 256  # `flyp evaluate --batch-size`, features and ID-val scoring (flyp.scoring)
# Weight ensembling holds at most this many bytes of mixed models at once (flyp/ensemble.py).
ENSEMBLE_BYTES = 8 << 30
ENSEMBLE_ALPHAS = 11  # WiSE-FT's grid, the real presets' (at most one pass's models)

# How each method trains (flyp/methods/*.py), as memory sees it. ``contrastive``: both towers and
# logit_scale, CLIP loss on (image, caption) pairs (FLYP, pretraining); ``contrastive_image_only``:
# the same with the text tower and temperature frozen; ``ce_both_towers``: cross-entropy against
# every class's prompt, both towers trained (the prompts go through the text tower with grads);
# ``image_ce``: image tower and a linear head, cross-entropy (FT, LP-FT); ``l2sp``: the same plus a
# copy of the pretrained image tower and the penalty; ``inference``: no gradients.
CONTRASTIVE, IMAGE_ONLY, CE_BOTH, IMAGE_CE, L2SP, INFERENCE = (
    "contrastive",
    "contrastive_image_only",
    "ce_both_towers",
    "image_ce",
    "l2sp",
    "inference",
)
METHOD_KINDS = {
    "flyp": CONTRASTIVE,
    "flyp_no_collisions": CONTRASTIVE,
    "flyp_image_only": IMAGE_ONLY,
    "ce_both_towers": CE_BOTH,
    "ft": IMAGE_CE,
    "lpft": IMAGE_CE,
    "l2sp": L2SP,
    "lp": INFERENCE,
    "zeroshot": INFERENCE,
}
PRETRAIN, EVALUATION = "pretrain", "evaluation"  # jobs that are not a method's


def job_kind(method: str) -> str:
    """The memory kind of a method, pretraining or evaluation."""
    if method == PRETRAIN:
        return CONTRASTIVE
    if method == EVALUATION:
        return INFERENCE
    if method not in METHOD_KINDS:  # a KeyError: the pre-flight check lets the job run unchecked
        raise KeyError(f"method {method!r} has no memory kind (flyp.memplan.METHOD_KINDS)")
    return METHOD_KINDS[method]


@dataclass(frozen=True)
class Job:
    """One job as memory sees it. ``batch``: the global batch (training) or the evaluation batch;
    each of ``gpus`` ranks holds ``batch / gpus`` of it. ``classes``: the head's rows, and the
    prompts ``ce_both_towers`` sends through the text tower each step."""

    name: str  # what the job is, for messages: "imagenet flyp"
    model: str  # an open_clip architecture
    method: str  # a method name, PRETRAIN or EVALUATION
    batch: int
    classes: int
    precision: str = "fp32"
    grad_checkpointing: bool = False
    gpus: int = 1

    @property
    def kind(self) -> str:
        return job_kind(self.method)

    @property
    def per_rank(self) -> int:
        return -(-self.batch // self.gpus)


@dataclass(frozen=True)
class Estimate:
    """Bytes of each part of a job's peak (see the module's docstring)."""

    weights: int
    gradients: int
    optimizer: int
    anchors: int
    activations: int

    @property
    def margin(self) -> int:
        return int(MARGIN_FRACTION * self.subtotal) + MARGIN_BYTES

    @property
    def subtotal(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.anchors + self.activations

    @property
    def peak(self) -> int:
        return self.subtotal + self.margin


@dataclass(frozen=True)
class Trace:
    """Saved-for-backward bytes of one step: outside the transformer blocks, each block's input
    and each block's own (in the order they ran), and the parameters (all, trainable)."""

    outside: int
    block_inputs: tuple[int, ...]
    block_saved: tuple[int, ...]
    params: int
    trainable: int
    trained_clip: int  # the trainable parameters of the CLIP (not a head): L2-SP's anchors
    checkpointable: bool  # transformer blocks and no BatchNorm (flyp.training.speed_up)

    def activations(self, grad_checkpointing: bool) -> int:
        if not grad_checkpointing or not self.block_saved:
            return self.outside + sum(self.block_saved)
        return self.outside + sum(self.block_inputs) + max(self.block_saved)


# bf16 autocast as CUDA applies it, emulated on meta tensors (which autocast does not touch):
# matmuls, convolutions and attention take bf16 copies of their float inputs (the weights' copies
# too, which autocast keeps for the step); the ops CUDA's autocast runs in fp32 take fp32 inputs;
# the rest follow type promotion (the residual stream stays fp32). torch.amp autocast op lists.
_LOWER = (
    F.linear,
    F.conv2d,
    F.scaled_dot_product_attention,
    F.multi_head_attention_forward,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
)
_FP32 = (
    F.layer_norm,
    F.softmax,
    F.log_softmax,
    F.cross_entropy,
    F.normalize,
    torch.softmax,
    torch.exp,
    torch.Tensor.softmax,
    torch.Tensor.exp,
    torch.Tensor.norm,
)


def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


class _Autocast(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtype = torch.bfloat16 if func in _LOWER else torch.float32 if func in _FP32 else None
        if dtype is not None:
            args = _cast(args, dtype)
            kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class _SavedBytes:
    """Counts the bytes autograd saves for backward (once per storage, parameters left out),
    attributed to the transformer block running (forward hooks on each block of open_clip's
    ``Transformer.resblocks``) or to the rest of the step."""

    def __init__(self, module: nn.Module):
        self.params = {p.untyped_storage()._cdata for p in module.parameters()}
        self.seen: set[int] = set()
        self.outside, self.current = 0, None
        self.inputs: list[int] = []
        self.blocks: list[int] = []
        self.hooks = [
            hook(block)
            for sub in module.modules()
            for block in getattr(sub, "resblocks", ())
            for hook in (
                lambda b: b.register_forward_pre_hook(self.enter),
                lambda b: b.register_forward_hook(self.leave),
            )
        ]

    def remove(self) -> None:
        for handle in self.hooks:
            handle.remove()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.params and key not in self.seen:
            self.seen.add(key)
            if self.current is None:
                self.outside += storage.nbytes()
            else:
                self.blocks[self.current] += storage.nbytes()
        return tensor

    def enter(self, block, args) -> None:
        self.current = len(self.blocks)
        self.blocks.append(0)
        self.inputs.append(args[0].numel() * args[0].element_size())  # (B, L, D) kept by GC

    def leave(self, block, args, out) -> None:
        self.current = None


@functools.cache
def meta_clip(model: str) -> nn.Module:
    """The open_clip CLIP ``model`` on the meta device: its architecture, no weights (built
    once; ``trace`` sets its trainable parameters for each kind)."""
    import logging

    import open_clip

    from flyp import models  # noqa: F401 (registers flyp/model_configs)

    if model not in open_clip.list_models():
        raise UserError(f"model {model!r}: not an open_clip architecture")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "No pretrained weights loaded": the intent here
    try:
        return open_clip.create_model(model, device="meta")
    finally:
        root.setLevel(level)


def _image_size(clip: nn.Module) -> tuple[int, int]:
    size = getattr(clip.visual, "image_size", 224)
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def _trainable(clip: nn.Module, kind: str) -> None:
    """Gradients where the method trains: the image tower alone for the image-only kinds."""
    image_only = kind in (IMAGE_ONLY, IMAGE_CE, L2SP)
    for name, p in clip.named_parameters():
        p.requires_grad_(not image_only or name.startswith("visual."))


def _step_loss(clip: nn.Module, kind: str, batch: int, classes: int, head: nn.Module | None):
    """One step's loss of ``kind`` on inputs of zeros (flyp/methods/*.py, flyp/contrastive.py)."""
    import open_clip

    device = next(clip.parameters()).device
    images = torch.zeros(batch, 3, *_image_size(clip), device=device)  # normalised (B, 3, H, W)
    length = getattr(clip, "context_length", 77)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    if kind in (CONTRASTIVE, IMAGE_ONLY):
        tokens = torch.zeros(batch, length, dtype=torch.long, device=device)  # (B, L)
        image, text, scale = clip(images, tokens)[:3]
        return open_clip.ClipLoss()(image, text, scale)
    if kind == CE_BOTH:
        prompts = torch.zeros(classes, length, dtype=torch.long, device=device)  # (C, L)
        image = F.normalize(clip.encode_image(images), dim=-1)  # (B, D)
        text = F.normalize(clip.encode_text(prompts), dim=-1)  # (C, D)
        return F.cross_entropy(clip.logit_scale.exp() * image @ text.T, labels)
    features = clip.encode_image(images)  # (B, D)
    if kind == INFERENCE:
        return features.sum()
    loss = F.cross_entropy(head(F.normalize(features, dim=-1)), labels)
    if kind == L2SP:  # flyp/methods/l2sp.py: lambda * sum ||p - p0||^2 (lambda changes nothing)
        anchors = [(p, torch.empty_like(p)) for p in clip.parameters() if p.requires_grad]
        loss = loss + sum(((p - p0) ** 2).sum() for p, p0 in anchors)
    return loss


@functools.cache
def trace(model: str, kind: str, batch: int, classes: int, precision: str = "fp32") -> Trace:
    """Trace one step of ``kind`` for ``batch`` examples (one rank's) on the meta device."""
    clip = meta_clip(model)
    step = trace_module(clip, kind, batch, classes, precision, embed_dim=_embed_dim(model))
    return replace(step, checkpointable=model_checkpointable(model))


def _embed_dim(model: str) -> int:
    import open_clip

    return open_clip.get_model_config(model)["embed_dim"]


def trace_module(
    clip: nn.Module, kind: str, batch: int, classes: int, precision: str = "fp32", *, embed_dim=0
) -> Trace:
    """Trace one step of ``kind`` with ``clip`` where its parameters are (meta, or real: the
    tests compare the two); ``embed_dim``: the head's input width (FT, L2-SP)."""
    device = next(clip.parameters()).device
    clip.train()
    _trainable(clip, kind)
    head = None
    if kind in (IMAGE_CE, L2SP):  # (C, D), zero-shot-initialised in the methods
        head = nn.Linear(embed_dim, classes, bias=False, device=device)
    counter = _SavedBytes(clip)
    autocast = _Autocast() if precision == "bf16" else contextlib.nullcontext()
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), autocast:
            _step_loss(clip, kind, batch, classes, head)
    finally:
        counter.remove()
    params = [*clip.parameters(), *(head.parameters() if head is not None else ())]
    return Trace(
        outside=counter.outside,
        block_inputs=tuple(counter.inputs),
        block_saved=tuple(counter.blocks),
        params=sum(p.numel() * 4 for p in params),
        trainable=sum(p.numel() * 4 for p in params if p.requires_grad),
        trained_clip=sum(p.numel() * 4 for p in clip.parameters() if p.requires_grad),
        checkpointable=False,
    )


def estimate(job: Job) -> Estimate:
    """The peak of ``job`` on each of its GPUs (bytes by part; the module's docstring)."""
    kind = job.kind
    if kind == INFERENCE:
        step = trace(job.model, kind, job.per_rank, job.classes)
        # No gradients: one block's working set (what it would save, an upper bound) beside the
        # block's input and output; a model without blocks, all it would save.
        working = (
            max(step.block_saved) + 2 * max(step.block_inputs) if step.block_saved else step.outside
        )
        models = min(ENSEMBLE_BYTES // step.params, ENSEMBLE_ALPHAS)  # flyp.ensemble: a pass
        mixed = models * step.params if job.method == EVALUATION else 0
        return Estimate(step.params + mixed, 0, 0, 0, working)
    step = trace(job.model, kind, job.per_rank, job.classes, job.precision)
    if job.grad_checkpointing and not step.checkpointable:
        raise UserError(
            f"{job.name}: grad_checkpointing: model {job.model} has no transformer blocks to "
            f"checkpoint, or has BatchNorm layers; turn it off"
        )
    buckets = step.trainable if job.gpus > 1 else 0  # DistributedDataParallel's gradient buckets
    return Estimate(
        weights=step.params,
        gradients=step.trainable + buckets,
        optimizer=2 * step.trainable,
        anchors=step.trained_clip if kind == L2SP else 0,
        activations=step.activations(job.grad_checkpointing),
    )


def fits(job: Job, memory: int) -> bool:
    return estimate(job).peak <= memory


def checkpointable(job: Job) -> bool:
    """Whether gradient checkpointing applies to ``job`` (a training job of a ViT CLIP)."""
    return job.kind != INFERENCE and model_checkpointable(job.model)


def model_checkpointable(model: str) -> bool:
    """open_clip checkpoints transformer blocks; a model with BatchNorm is refused
    (flyp.training.speed_up: the recomputed forward would update its statistics twice)."""
    clip = meta_clip(model)
    blocks = any(getattr(m, "resblocks", None) for m in clip.modules())
    return blocks and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in clip.modules()
    )


def auto_grad_checkpointing(job: Job, memory: int) -> Job:
    """``runtime.grad_checkpointing: auto``: on where the job does not fit ``memory`` bytes
    without it and checkpointing applies; off otherwise (the same numbers either way)."""
    on = checkpointable(job) and not fits(replace(job, grad_checkpointing=False), memory)
    return replace(job, grad_checkpointing=on)


def _changes(job: Job) -> list[tuple[dict, str]]:
    """Settings that lower a job's peak, each with how params.yaml says it."""
    out = []
    if job.kind != INFERENCE and not job.grad_checkpointing and checkpointable(job):
        out.append(({"grad_checkpointing": True}, "runtime.grad_checkpointing: true"))
    if job.kind != INFERENCE and job.precision != "bf16":
        out.append(({"precision": "bf16"}, "precision: bf16"))
    if job.kind != INFERENCE and job.batch % (job.gpus * 2) == 0:
        out.append(({"gpus": job.gpus * 2}, f"runtime.gpus_per_job: {job.gpus * 2}"))
    return out


def _smaller_batch(job: Job, memory: int) -> str | None:
    """The largest batch (halving) that fits, and what a smaller batch changes."""
    batch, least = job.batch // 2, 2 * job.gpus  # two examples a rank (BatchNorm needs two)
    while batch >= least and not fits(replace(job, batch=batch), memory):
        batch //= 2
    if batch < least:
        return None
    if job.kind == INFERENCE:
        return f"--batch-size {batch}"
    what = "the contrastive batch" if job.kind in (CONTRASTIVE, IMAGE_ONLY) else "the optimisation"
    return f"batch_size: {batch} (a smaller batch changes {what})"


def remedies(job: Job, memory: int) -> list[str]:
    """What would make ``job`` fit ``memory`` bytes: each single change that does, else each
    pair; then the largest smaller batch that does."""
    changes = _changes(job)
    found = [say for change, say in changes if fits(replace(job, **change), memory)]
    if not found:
        for i, (first, say_first) in enumerate(changes):
            for second, say_second in changes[i + 1 :]:
                if fits(replace(job, **first, **second), memory):
                    found.append(f"{say_first} and {say_second}")
    smaller = _smaller_batch(job, memory)
    return found + ([smaller] if smaller else [])


def describe(job: Job) -> str:
    """A job's settings, as the plan's table and the pre-flight message name them."""
    if job.kind == INFERENCE:
        return f"batch {job.per_rank}, no gradients"
    gc = "on" if job.grad_checkpointing else "off"
    ranks = f" on each of {job.gpus} GPUs" if job.gpus > 1 else ""
    return f"batch {job.per_rank}{ranks}, {job.precision}, grad_checkpointing {gc}"


def device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of CUDA device ``device``."""
    return torch.cuda.mem_get_info(device)


def preflight(job: Job, device, *, auto: bool = False, memory: tuple[int, int] | None = None):
    """Before ``job`` allocates on ``device``: its plan against the device's free memory
    (``memory``: (free, total) bytes, else the device's). ``auto``: gradient checkpointing as
    ``auto_grad_checkpointing`` decides. Returns the job as it will run; a job that would not
    fit stops here with one line naming the settings that would. A CPU job runs as it is (with
    ``auto``, checkpointing off): nothing is checked."""
    device = torch.device(device)
    if device.type != "cuda":
        return replace(job, grad_checkpointing=False) if auto else job
    free, total = memory or device_memory(device)
    if auto:
        job = auto_grad_checkpointing(job, free)
    need = estimate(job).peak
    if need <= free:
        return job
    fixes = remedies(job, free)
    advice = f"would fit: {'; or '.join(fixes)}" if fixes else "no setting found that fits"
    raise UserError(
        f"{job.name}: needs about {need / GIB:.1f} GiB of GPU memory ({describe(job)}), but "
        f"{device} has {free / GIB:.1f} GiB free of {total / GIB:.1f} GiB; {advice} "
        f"(`flyp plan` shows every job's estimate)"
    )
