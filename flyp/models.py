"""CLIP models (open_clip), classifier heads and checkpoints.

Architectures are data: every JSON file in ``flyp/model_configs/`` is registered with open_clip, so
the embedded benchmark's small CLIP and the paper's ViT-B/16 go through the same
``open_clip.create_model``. Checkpoints are safetensors files: the CLIP weights under ``clip.`` and,
for a classifier, a linear head under ``head.``; the model name, provenance, and the preprocessing
and activation the weights expect travel in the file's metadata. Nothing is pickled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import MaybeToTensor, PreprocessCfg, image_transform_v2
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from torchvision.transforms import Compose, Normalize, PILToTensor

from flyp.io import UserError, atomic_path, sha256_file

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

FORMAT = "flyp-checkpoint/1"


def create_clip(model_name: str, pretrained: str | None = None) -> nn.Module:
    """An open_clip CLIP: random init, an open_clip pretrained tag, or a local weights file."""
    if model_name not in open_clip.list_models():
        raise UserError(
            f"unknown model {model_name!r}: not an open_clip architecture nor a config "
            f"in {MODEL_CONFIG_DIR}"
        )
    if pretrained:
        check_quickgelu(model_name, pretrained)
    try:
        # open_clip warns "No pretrained weights loaded" for a random init, which is the intent
        # here (weights come from our own checkpoints); keep its other messages.
        quiet = logging.getLogger().level if not pretrained else None
        if quiet is not None:
            logging.getLogger().setLevel(logging.ERROR)
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained or None)
        finally:
            if quiet is not None:
                logging.getLogger().setLevel(quiet)
    except (RuntimeError, AssertionError, KeyError, ValueError) as e:
        # open_clip raises RuntimeError for unknown tags, failed downloads and weights that do not
        # load; the others from resizing or converting weights of another architecture.
        raise UserError(
            f"cannot load weights {pretrained!r} for {model_name!r}: {load_error_summary(e)}"
        ) from None
    set_preprocess_cfg(model, open_clip.get_model_preprocess_cfg(model))
    model.visual.register_forward_pre_hook(_normalise_uint8_input)
    return model


def set_preprocess_cfg(clip: nn.Module, cfg: dict) -> None:
    """Give ``clip`` the preprocessing its weights expect (open_clip's ``preprocess_cfg``) and the
    matching input normalisation: its image tower takes the uint8 images the loaders make
    (``preprocess_transforms``) and converts them on its own device with the config's mean/std
    (kept as non-persistent buffers: they follow ``.to(device)`` and stay out of checkpoints)."""
    open_clip.set_model_preprocess_cfg(clip, cfg)
    for name in ("mean", "std"):
        value = torch.tensor(cfg[name], dtype=torch.float32).view(-1, 1, 1)  # (3, 1, 1)
        buffer = getattr(clip.visual, f"input_{name}", None)
        device = buffer.device if buffer is not None else "cpu"
        clip.visual.register_buffer(f"input_{name}", value.to(device), persistent=False)


def normalise_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) to the float input of the image tower: the operations of
    torchvision's ToTensor then Normalize, in the same order, so the values are the same."""
    return images.float().div_(255).sub_(mean).div_(std)


def _normalise_uint8_input(visual: nn.Module, args: tuple):
    """Forward pre-hook of the image tower: uint8 images are normalised here, on the device;
    float images (already normalised) pass unchanged."""
    images, *rest = args
    if images.dtype != torch.uint8:
        return None
    return (normalise_images(images, visual.input_mean, visual.input_std), *rest)


def load_error_summary(e: Exception) -> str:
    """One line for an error of loading weights. torch's ``load_state_dict`` lists every missing,
    unexpected and misshapen tensor on lines of their own (hundreds for a wrong architecture);
    this counts them and names the first of each."""
    text = str(e)
    if isinstance(e, KeyError):
        return f"the weights have no tensor {e.args[0]!r} (another architecture?)"
    if isinstance(e, AssertionError):
        return f"the weights do not fit this architecture ({text or 'open_clip refused them'})"
    if "Error(s) in loading state_dict" not in text:
        return " ".join(text.split())
    parts = []
    for what in ("Missing", "Unexpected"):
        found = re.search(rf"{what} key\(s\) in state_dict: (.*)", text)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{len(keys)} {what.lower()} tensors (e.g. {keys[0]!r})")
    sizes = re.findall(r"size mismatch for ([^:]+):", text)
    if sizes:
        parts.append(f"{len(sizes)} tensors of another shape (e.g. {sizes[0]!r})")
    return "the weights do not fit this architecture: " + ", ".join(parts)


def check_quickgelu(model_name: str, pretrained: str) -> None:
    """Refuse OpenAI-trained (QuickGELU) weights in a GELU architecture: open_clip only warns, and
    the features are silently wrong (docs/reference.md, "Pretrained weights and preprocessing")."""
    if os.path.isfile(pretrained):
        tag_quick = quickgelu_weights_file(pretrained)
    else:
        tag_quick = open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False)
        if not tag_quick and "quickgelu" not in model_name.lower():
            # A tag registered only for the -quickgelu variant means QuickGELU weights.
            base = f"{model_name}-quickgelu"
            tag_cfg = open_clip.get_pretrained_cfg(base, pretrained)
            tag_quick = bool(tag_cfg.get("quick_gelu", False))
    if tag_quick and not uses_quickgelu(model_name):
        raise UserError(
            f"pretrained weights {pretrained!r} were trained with QuickGELU but model "
            f"{model_name!r} uses GELU; use {model_name}-quickgelu"
        )


def uses_quickgelu(model_name: str) -> bool:
    return bool(open_clip.get_model_config(model_name).get("quick_gelu", False))


def quickgelu_weights_file(path: str) -> bool:
    """Whether a local weights file holds QuickGELU weights, judged by where it comes from (the
    file has no activation in it): "openai" or "quickgelu" anywhere in its path (symlinks
    followed); a folder named after the Hugging Face repository of a QuickGELU tag (the hub cache
    keeps timm/vit_base_patch16_clip_224.openai as models--timm--vit_base_patch16_clip_224.openai/
    snapshots/<hash>/open_clip_pytorch_model.bin); or open_clip's own download of a QuickGELU tag
    (~/.cache/clip/ViT-B-16.pt, recognised by the SHA-256 that OpenAI's URL carries)."""
    paths = (Path(path).absolute(), Path(path).resolve())
    parts = {part.lower() for p in paths for part in p.parts}
    if any("openai" in part or "quickgelu" in part for part in parts):
        return True
    digest = None
    for model, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(model, tag)
        if not cfg.get("quick_gelu"):
            continue
        repo = cfg.get("hf_hub", "").strip("/").rpartition("/")[2].lower()  # timm/<repo>/
        if repo and any(part.endswith(repo) for part in parts):
            return True
        url = cfg.get("url", "")
        if url and url.rpartition("/")[2] == Path(path).name:
            if "openaipublic" not in url:  # distinctive release names (rn50-quickgelu-cc12m-...)
                return True
            digest = digest or sha256_file(path)  # RN50.pt, ViT-B-16.pt, ...: the hash decides
            if digest.startswith(url.split("/")[-2]):
                return True
    return False


@functools.cache  # its vocabulary is read once a process, and prompt_tokens' cache is shared
def get_tokenizer(model_name: str):
    return open_clip.get_tokenizer(model_name)


@functools.lru_cache(maxsize=4)
def prompt_tokens(tokenizer, prompts: tuple[str, ...]) -> torch.Tensor:
    """``tokenizer(prompts)``, kept for the next head built from the same prompts in this process
    (each epoch's validation of a method whose head comes from the text tower, each alpha of its
    weight ensemble). open_clip's tokenizer is plain Python: ImageNet's 1000 classes x 80
    templates take seconds each time; the tokens take 49 MB (int64, 77 a prompt)."""
    return tokenizer(list(prompts))


def image_transforms(model: nn.Module):
    """(train, eval) transforms from the model's preprocessing config (preprocess_transforms)."""
    return preprocess_transforms(open_clip.get_model_preprocess_cfg(model))


def checkpoint_transforms(ckpt: Checkpoint):
    """(train, eval) transforms for the images a checkpoint's weights expect (preprocess_cfg)."""
    return preprocess_transforms(preprocess_cfg(ckpt))


def preprocess_transforms(cfg: dict):
    """(train, eval) transforms from an open_clip preprocessing config, ending in uint8 (3, H, W)
    tensors. Train: RandomResizedCrop with scale (0.9, 1.0), bicubic, no flip (as FLYP); eval:
    resize + centre crop; both with the config's size, interpolation and resize mode. The float
    conversion and the mean/std normalisation happen on the model's device (set_preprocess_cfg):
    a quarter of the bytes cross from loader workers and to the GPU."""
    # A config read back from JSON has lists where open_clip's transforms expect tuples.
    cfg = PreprocessCfg(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return tuple(uint8_output(image_transform_v2(cfg, is_train=train)) for train in (True, False))


def uint8_output(transform: Compose) -> Compose:
    """open_clip's transform with its last two steps (to a float tensor, normalise) replaced by
    a uint8 tensor of the same pixels."""
    *steps, to_tensor, normalise = transform.transforms
    if not (isinstance(to_tensor, MaybeToTensor) and isinstance(normalise, Normalize)):
        raise ValueError(f"unexpected open_clip transform, no ToTensor + Normalize: {transform}")
    return Compose([*steps, PILToTensor()])


class ImageClassifier(nn.Module):
    """Image encoder + linear head on L2-normalised features (as in WiSE-FT / FLYP), or with
    ``normalize=False`` on the raw ``encode_image`` output (a linear probe fitted on it, as the
    FLYP reference's ``linear_lbfgs.py``, and LP-FT from such a probe). The zero-shot head's
    weights are ``logit_scale.exp() * text_embeddings`` so logits match CLIP's."""

    def __init__(self, clip: nn.Module, head: nn.Module, normalize: bool = True):
        super().__init__()
        self.clip = clip
        self.head = head
        self.normalize = normalize

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.clip.encode_image(images)  # (B, D)
        return F.normalize(x, dim=-1) if self.normalize else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, C)


# Prompts per text-tower forward when building a zero-shot head. Bounds its peak memory whatever
# the class count: the ViT-B/16 text tower holds about 2.4 MB of activations a prompt (77 tokens x
# 2048 MLP units x 4 B for each of QuickGELU's intermediates), so ImageNet's 1000 classes x 80
# templates in one forward would need about 190 GB, and 256 prompts need 0.65 GB
# (benchmarks/zeroshot_head_memory.py).
PROMPTS_PER_FORWARD = 256


@torch.no_grad()
def build_zero_shot_head(
    clip: nn.Module,
    tokenizer,
    classnames: list[str],
    templates: list[str],
    *,
    prompts_per_forward: int = PROMPTS_PER_FORWARD,
) -> nn.Linear:
    """Head from averaged, normalised template embeddings (open_clip's zero-shot classifier),
    scaled by the model's temperature, with zero bias.

    The class x template prompts go through the text tower ``prompts_per_forward`` at a time and
    are summed into one (C, D) accumulator, so memory does not grow with the number of classes
    (the sum, L2-normalised, is the normalised mean)."""
    was_training = clip.training
    clip.eval()
    device = next(clip.parameters()).device
    n_templates, n_prompts = len(templates), len(classnames) * len(templates)
    # class-major order: prompt i is template i % T of class i // T
    tokens = prompt_tokens(tokenizer, tuple(t.format(c) for c in classnames for t in templates))
    sums = None  # (C, D) sum over each class's templates of the normalised prompt embeddings
    for start in range(0, n_prompts, prompts_per_forward):
        stop = min(start + prompts_per_forward, n_prompts)
        emb = F.normalize(clip.encode_text(tokens[start:stop].to(device)), dim=-1).float()  # (P, D)
        if sums is None:
            sums = emb.new_zeros(len(classnames), emb.shape[1])
        sums.index_add_(0, torch.arange(start, stop, device=device) // n_templates, emb)
    clip.train(was_training)
    weights = F.normalize(sums, dim=-1) * clip.logit_scale.exp()  # (C, D)
    head = nn.Linear(weights.shape[1], weights.shape[0]).to(device)
    head.weight.copy_(weights)
    head.bias.zero_()
    return head


# ----------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Checkpoint:
    model_name: str
    clip: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None = None
    info: dict = field(default_factory=dict)
    path: Path | None = None  # the file it was read from, for messages


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Content hash of named CPU tensors (names, dtypes, shapes and bytes, in name order): what a
    checkpoint records so that loading notices weights changed or damaged after they were written
    (the safetensors header alone does not: random bytes in the tensor data still load)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, not copied
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    model_name: str,
    clip: nn.Module | dict,
    head: nn.Module | dict | None = None,
    info: dict | None = None,
) -> None:
    def state(x):
        sd = x.state_dict() if isinstance(x, nn.Module) else x
        # safetensors stores each tensor once: copy views/shared storage into contiguous CPU tensors
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}

    tensors = {f"clip.{k}": v for k, v in state(clip).items()}
    if head is not None:
        tensors.update({f"head.{k}": v for k, v in state(head).items()})
    # One metadata entry: safetensors writes several in arbitrary order, and the same weights must
    # give the same file bytes (the checkpoint hash is part of each result's provenance).
    metadata = {
        "flyp": json.dumps(
            {
                "format": FORMAT,
                "model_name": model_name,
                "info": info or {},
                "tensors_sha256": tensors_sha256(tensors),
            },
            sort_keys=True,
        )
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def checkpoint_layout(path: str | Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(metadata, {tensor name: shape}) of a checkpoint, read from its header alone: enough to
    check that two checkpoints fit together before any work with them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    try:
        meta = json.loads(metadata["flyp"])
        assert meta["format"] == FORMAT
    except (KeyError, ValueError, AssertionError):
        raise UserError(f"{path}: not a flyp checkpoint (expected {FORMAT!r} metadata)") from None
    return meta, shapes


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    meta, _ = checkpoint_layout(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    recorded = meta.get("tensors_sha256")  # absent in checkpoints written before it was recorded
    if recorded is not None and recorded != tensors_sha256(tensors):
        raise UserError(
            f"{path}: the tensors do not match the content hash the checkpoint "
            f"records (damaged or changed after it was written); rebuild it"
        )
    clip = {k[5:]: v for k, v in tensors.items() if k.startswith("clip.")}
    head = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")} or None
    return Checkpoint(meta["model_name"], clip, head, meta["info"], path)


def shape_mismatch(expected: dict[str, tuple], got: dict[str, tuple]) -> str | None:
    """How tensors ``got`` (name -> shape) differ from ``expected``, in one line (counts and the
    first name of each kind), or None when they fit."""
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    reshaped = sorted(
        k for k in expected.keys() & got.keys() if tuple(expected[k]) != tuple(got[k])
    )
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (e.g. {k!r}: {list(got[k])}, expected "
            f"{list(expected[k])})"
        )
    return ", ".join(parts) or None


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


# What a checkpoint records about how its weights are used: the preprocessing config open_clip
# resolved for the released weights and their activation (QuickGELU or not). `flyp pretrained`
# records them; every checkpoint derived from it carries them (carried_info).
CARRIED_INFO = ("preprocess", "quick_gelu")


def weights_info(model_name: str, clip: nn.Module) -> dict:
    """The CARRIED_INFO of a freshly loaded open_clip model: its preprocessing config (size, mean,
    std, interpolation, resize_mode, fill_color; a tag's own, e.g. SigLIP's mean/std and squash
    resize) and whether the architecture uses QuickGELU."""
    return {
        "preprocess": dict(open_clip.get_model_preprocess_cfg(clip)),
        "quick_gelu": uses_quickgelu(model_name),
    }


def carried_info(ckpt: Checkpoint) -> dict:
    """The CARRIED_INFO entries ``ckpt`` has, for the info of a checkpoint derived from it."""
    return {k: ckpt.info[k] for k in CARRIED_INFO if k in ckpt.info}


def preprocess_cfg(ckpt: Checkpoint) -> dict:
    """The preprocessing ``ckpt``'s weights were trained with: the recorded one, or for a checkpoint
    without (weights pretrained here, older checkpoints) the architecture's default."""
    recorded = ckpt.info.get("preprocess")
    return recorded or open_clip.get_model_preprocess_cfg(create_clip(ckpt.model_name))


def clip_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """The checkpoint's CLIP, carrying its recorded preprocessing config (so image_transforms of it,
    as for an open_clip pretrained model, gives the transforms its weights expect)."""
    recorded = ckpt.info.get("quick_gelu")
    if recorded is not None and recorded != uses_quickgelu(ckpt.model_name):
        raise UserError(
            f"checkpoint weights were trained with quick_gelu={recorded} but "
            f"{ckpt.model_name!r} has quick_gelu={not recorded}"
        )
    model = create_clip(ckpt.model_name)
    if ckpt.info.get("preprocess"):
        set_preprocess_cfg(model, ckpt.info["preprocess"])
    mismatch = shape_mismatch(shapes(model.state_dict()), shapes(ckpt.clip))
    if mismatch:  # load_state_dict would list every tensor on a line of its own
        raise UserError(
            f"{ckpt.path or 'checkpoint'}: its tensors do not fit its declared "
            f"architecture {ckpt.model_name!r}: {mismatch}"
        )
    model.load_state_dict(ckpt.clip)
    return model


def head_from_state(state: dict[str, torch.Tensor]) -> nn.Linear:
    out_features, in_features = state["weight"].shape
    head = nn.Linear(in_features, out_features)
    head.load_state_dict(state)
    return head


def normalizes_features(info: dict) -> bool:
    """Whether a checkpoint's head reads L2-normalised features (``normalize_features`` in its
    info; absent: True, every head but a probe fitted on raw features and LP-FT from one)."""
    return bool(info.get("normalize_features", True))


def classifier_from_checkpoint(ckpt: Checkpoint) -> ImageClassifier:
    if ckpt.head is None:
        raise UserError(f"checkpoint of {ckpt.model_name!r} has no classification head")
    return ImageClassifier(
        clip_from_checkpoint(ckpt), head_from_state(ckpt.head), normalizes_features(ckpt.info)
    )
