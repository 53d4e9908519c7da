"""GPU jobs: a job that runs on a GPU declares `gpu=1`, and a local run allows as many of them at
once as the machine has GPUs; CPU runs declare nothing. Dry runs on a faked GPU machine (a
stand-in `nvidia-smi` on PATH, or CUDA_VISIBLE_DEVICES)."""

import re

import pytest

from flyp.devices import claim_gpu
from tests.test_imagenet import dry_run, workflow_copy

GPU_RULES = {"features", "finetune", "finetune_fewshot", "evaluate_ensemble"}
# (ImageNet has no few-shot runs, so no finetune_fewshot, which trains and scores a draw)
IMAGENET_GPU_RULES = {"features", "finetune", "evaluate_ensemble"}
SMALL = ["seeds=[0]", "methods=[zeroshot,lp,ft,flyp]"]


def job_resources(out: str) -> list[tuple[str, str]]:
    """(rule, resources line) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        jobs.append((rule, resources.group(1) if resources else ""))
    return jobs


@pytest.fixture()
def fake_gpus(tmp_path, monkeypatch):
    """A machine with two GPUs, as `nvidia-smi -L` lists them (MIG lines are not GPUs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-a)'\n"
        "echo '  MIG 1g.18gb Device 0: (UUID: MIG-b)'\n"
        "echo 'GPU 1: NVIDIA H200 (UUID: GPU-c)'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_gpu_jobs_declare_a_gpu_and_run_one_per_gpu(tmp_path, fake_gpus):
    out = dry_run(workflow_copy(tmp_path), *SMALL, "-p")  # runtime.device: auto
    assert "GPU jobs: at most 2 at once" in out
    jobs = job_resources(out)
    assert {rule for rule, _ in jobs} >= IMAGENET_GPU_RULES | {"prepare_data", "report"}
    for rule, resources in jobs:
        assert ("gpu=1" in resources) == (rule in GPU_RULES), (rule, resources)
    # the optimisation switches reach the command line: FLYP as the reference, FT clips at 1.0
    flyp = re.search(r"flyp finetune .*--method flyp .*seed0.*", out).group(0)
    assert "--grad-clip 0 " in flyp
    assert "--precision fp32 --decay all --no-clamp-logit-scale " in flyp
    assert "--grad-clip 1.0 " in re.search(r"flyp finetune .*--method ft .*seed0.*", out).group(0)


@pytest.mark.parametrize(
    "setting, env",
    [
        ("runtime={device: cpu, threads: 0, workers: 0}", None),  # GPUs present, CPU asked for
        ("runtime={device: auto, threads: 0, workers: 0}", ""),  # auto on a machine with none
    ],
)
def test_cpu_runs_declare_no_gpu(tmp_path, fake_gpus, monkeypatch, setting, env):
    if env is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    out = dry_run(workflow_copy(tmp_path), *SMALL, setting)
    assert "GPU jobs" not in out
    assert not any("gpu=" in resources for _, resources in job_resources(out))


def test_concurrent_jobs_claim_different_gpus(tmp_path):
    gpus = ["GPU-a", "GPU-b"]
    assert claim_gpu(gpus, tmp_path) == 0
    assert claim_gpu(gpus, tmp_path) == 1  # the first one's lock is held
    assert claim_gpu(gpus, tmp_path) == 0  # all taken: share the first
