"""The GPU memory plan (flyp/memplan.py, `flyp plan`) and the pre-flight check of GPU jobs, on the
CPU: the meta-device trace against a real step's saved tensors, every preset's defaults against
one 80 GB GPU, and a faked small GPU."""

import json

import open_clip
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from torch.nn.attention import SDPBackend, sdpa_kernel

from flyp import memplan
from flyp.cli import _fit_device, main
from flyp.io import UserError
from flyp.methods import method_names
from flyp.training import TrainConfig
from flyp.workflow.gpuplan import plan, preset_jobs
from tests.conftest import ROOT

SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"
PARAMS = ROOT / "params.yaml"
VIT = "ViT-B-16-quickgelu"
GPU_80 = 80 << 30
REAL_PRESETS = ("imagenet", "iwildcam", "fmow", "caltech101", "cars", "flowers102", "sst2", "pcam")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("kind", [memplan.CONTRASTIVE, memplan.CE_BOTH, memplan.L2SP])
def test_the_meta_trace_saves_what_a_real_cpu_step_saves(kind):
    """The fixture ViT (flyp/model_configs/flyp-fixture-vit.json), a real fp32 step on the CPU
    with PyTorch's reference attention (the kernel meta tensors take), counted the same way."""
    torch.manual_seed(0)
    real = open_clip.create_model("flyp-fixture-vit")
    with sdpa_kernel(SDPBackend.MATH):
        measured = memplan.trace_module(real, kind, 8, 5, embed_dim=32)
    estimated = memplan.trace("flyp-fixture-vit", kind, 8, 5)
    assert measured.block_saved == estimated.block_saved
    assert measured.block_inputs == estimated.block_inputs
    assert (measured.outside, measured.params, measured.trainable) == (
        estimated.outside,
        estimated.params,
        estimated.trainable,
    )
    assert sum(estimated.block_saved) > 0 and len(estimated.block_saved) == (
        2 if kind != memplan.L2SP else 1  # the image tower's block, the text tower's
    )


def test_emulated_bf16_autocast_saves_about_what_cpu_autocast_saves():
    """On meta tensors autocast does nothing: memplan emulates CUDA's op lists. Against the CPU's
    own bf16 autocast (whose lists differ a little) the estimate is not lower, and within 25%."""
    real = open_clip.create_model("flyp-fixture-vit")
    with sdpa_kernel(SDPBackend.MATH), torch.autocast("cpu", dtype=torch.bfloat16):
        measured = memplan.trace_module(real, memplan.CONTRASTIVE, 8, 5)
    bf16 = memplan.trace("flyp-fixture-vit", memplan.CONTRASTIVE, 8, 5, "bf16")
    fp32 = memplan.trace("flyp-fixture-vit", memplan.CONTRASTIVE, 8, 5, "fp32")
    saved = [t.activations(False) for t in (measured, bf16, fp32)]
    assert saved[0] <= saved[1] <= 1.25 * saved[0] and saved[1] < 0.8 * saved[2]


def test_gradient_checkpointing_keeps_block_inputs_and_one_blocks_activations():
    """ViT-B/16 at 512 images in fp32: about 176 MiB an image without it (the review's 141 MiB
    left out the attention probabilities), a few GiB with it."""
    step = memplan.trace(VIT, memplan.IMAGE_CE, 512, 1000)
    per_image = step.activations(False) / 512 / (1 << 20)
    assert 140 < per_image < 200
    assert step.activations(True) == step.outside + sum(step.block_inputs) + max(step.block_saved)
    assert step.activations(True) < step.activations(False) / 6


def test_every_registered_method_has_a_memory_kind():
    assert set(method_names()) <= set(memplan.METHOD_KINDS)


@pytest.mark.parametrize("preset", [*REAL_PRESETS, "embedded"])
def test_every_preset_fits_one_80gb_gpu_at_its_defaults(preset):
    rows = plan(preset_jobs(PARAMS, SCHEMA, preset, {}), GPU_80)
    assert {row.job.method for row in rows} >= {"flyp", "ce_both_towers", "ft", "evaluation"}
    assert all(row.fits for row in rows), [(r.job.name, r.peak >> 30) for r in rows if not r.fits]
    for row in rows:  # the reference's batches, in fp32
        if row.job.kind != memplan.INFERENCE and "k=" not in row.job.name:
            assert row.job.batch == (
                512 if preset == "imagenet" else 128 if preset == "embedded" else 256
            )
            assert row.job.precision == "fp32"


def test_imagenet_flyp_needs_checkpointing_at_its_batch_on_80_but_not_on_141_gb():
    jobs = dict(
        (job.method, (job, auto)) for job, auto in preset_jobs(PARAMS, SCHEMA, "imagenet", {})
    )
    on_80 = plan([jobs["flyp"]], GPU_80)[0]
    on_141 = plan([jobs["flyp"]], 141 << 30)[0]
    assert on_80.auto and on_80.job.grad_checkpointing and on_80.unchecked > GPU_80
    assert on_141.auto and not on_141.job.grad_checkpointing and on_141.fits


def test_a_forced_batch_of_1024_without_checkpointing_does_not_fit_and_says_what_would():
    result = invoke(
        "plan", "--benchmark", "imagenet", "--batch-size", 1024, "--no-grad-checkpointing"
    )
    assert result.exit_code == 0, result.output
    flyp = next(line for line in result.output.splitlines() if line.startswith("| imagenet flyp |"))
    cells = [c.strip() for c in flyp.strip("|").split("|")]
    assert cells[1] == "1024" and cells[4] == "off" and cells[7] == "NO"
    assert "runtime.grad_checkpointing: true" in cells[8]
    assert "batch_size: 256 (a smaller batch changes the contrastive batch)" in cells[8]


def test_the_pre_flight_check_stops_a_job_that_would_not_fit_with_one_line(monkeypatch):
    monkeypatch.setattr(memplan, "device_memory", lambda device: (24 << 30, 24 << 30))
    job = memplan.Job("imagenet flyp", VIT, "flyp", 512, 1000)
    with pytest.raises(UserError) as error:
        memplan.preflight(job, torch.device("cuda"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("imagenet flyp: needs about 123.")
    assert "24.0 GiB free of 24.0 GiB" in message
    assert "would fit: runtime.grad_checkpointing: true" in message
    # auto: checkpointing turned on, and the job then fits
    assert memplan.preflight(job, torch.device("cuda"), auto=True).grad_checkpointing


def test_the_cli_check_resolves_auto_on_a_gpu_and_leaves_a_cpu_job_as_it_is(monkeypatch):
    cfg = TrainConfig(1, 1e-5, 0.1, 512, 0, 0, grad_checkpointing="auto")
    job = memplan.Job("imagenet flyp", VIT, "flyp", 512, 1000)
    monkeypatch.setattr(memplan, "device_memory", lambda device: (GPU_80, GPU_80))
    assert _fit_device(torch.device("cuda"), lambda: job, cfg).checkpoint_blocks is True
    monkeypatch.setattr(memplan, "device_memory", lambda device: (141 << 30, 141 << 30))
    assert _fit_device(torch.device("cuda"), lambda: job, cfg).checkpoint_blocks is False

    def no_plan():
        raise AssertionError("a CPU job is not planned")

    on_cpu = _fit_device(torch.device("cpu"), no_plan, cfg)
    assert on_cpu.grad_checkpointing == "auto" and on_cpu.checkpoint_blocks is False
    fixed = TrainConfig(1, 1e-5, 0.1, 512, 0, 0)  # false: nothing to resolve
    assert _fit_device(torch.device("cpu"), no_plan, fixed) == fixed


def test_a_finetune_on_a_faked_small_gpu_stops_before_it_allocates(
    tiny_tables, tiny_captions, tiny_pretrained, tmp_path, monkeypatch
):
    monkeypatch.setattr("flyp.distributed.resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(memplan, "device_memory", lambda device: (1 << 29, 1 << 29))
    out = tmp_path / "best.safetensors"
    result = invoke(*_finetune(tiny_tables, tiny_captions, tiny_pretrained, out, "auto"))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "embedded ft: needs about" in errors[0], result.output
    assert not out.exists()


def test_a_cpu_finetune_with_auto_trains_without_checkpointing_and_records_it(
    tiny_tables, tiny_captions, tiny_pretrained, tmp_path
):
    out = tmp_path / "best.safetensors"
    result = invoke(*_finetune(tiny_tables, tiny_captions, tiny_pretrained, out, "auto"))
    assert result.exit_code == 0, result.output
    with safe_open(str(out), framework="pt") as f:
        info = json.loads(f.metadata()["flyp"])["info"]
    assert info["config"]["grad_checkpointing"] == "auto"  # as asked: resumes on any device
    assert info["grad_checkpointing"] == {"auto": False}  # as run


def _finetune(tables, captions, pretrained, out, grad_checkpointing):
    return (
        "finetune",
        "--benchmark",
        "embedded",
        "--data",
        tables,
        "--captions",
        captions,
        "--pretrained",
        pretrained,
        "--method",
        "ft",
        "--epochs",
        1,
        "--lr",
        1e-3,
        "--wd",
        0,
        "--batch-size",
        64,
        "--grad-checkpointing",
        grad_checkpointing,
        "--out",
        out,
        "--log-csv",
        out.with_suffix(".csv"),
    )
