"""GPU jobs: a job that runs on a GPU declares `gpu=1`, and a local run allows as many of them at
once as the machine has GPUs; CPU runs declare nothing. Dry runs on a faked GPU machine (a
stand-in `nvidia-smi` on PATH, or CUDA_VISIBLE_DEVICES)."""

import fcntl
import os
import re
import tempfile
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from flyp import devices
from flyp.devices import claim_gpu, resolve_device
from flyp.io import UserError
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
    assert "--deterministic" not in out  # runtime.deterministic false: commands as before


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
    assert claim_gpu(gpus, tmp_path) == 1  # the first one's lock is held (a lock per open file)
    with pytest.raises(UserError, match=r"^all 2 GPU\(s\) are held by other flyp processes"):
        claim_gpu(gpus, tmp_path, wait=0)  # all taken: never GPU 0 again, shared unknowingly


def hold(lock_dir, gpu: str):
    """Another process's claim of ``gpu`` (a lock on its own open file, as claim_gpu takes)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    handle = open(lock_dir / f"{gpu}.lock", "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_a_claim_waits_for_a_gpu_until_its_holder_lets_go(tmp_path, capfd):
    held = hold(tmp_path, "GPU-b")
    threading.Timer(0.5, held.close).start()  # the other job ends half a second later
    start = time.monotonic()
    assert claim_gpu(["GPU-a", "GPU-b"], tmp_path, wanted=1, wait=30) == 1
    assert 0.4 < time.monotonic() - start < 5
    assert "cuda:1 is held by other flyp processes: waiting up to 30 s" in capfd.readouterr().err


def test_a_claim_of_a_held_gpu_fails_after_its_wait(tmp_path, monkeypatch):
    held = hold(tmp_path, "GPU-b")
    monkeypatch.setenv("FLYP_GPU_WAIT", "0.2")
    with pytest.raises(UserError, match=r"^cuda:1 is held .* \(waited 0 s; locks in "):
        claim_gpu(["GPU-a", "GPU-b"], tmp_path, wanted=1)
    assert claim_gpu(["GPU-a", "GPU-b"], tmp_path) == 0  # GPU 0 was free all along
    monkeypatch.setenv("FLYP_GPU_WAIT", "soon")
    with pytest.raises(UserError, match=r"^\$FLYP_GPU_WAIT: expected seconds"):
        claim_gpu(["GPU-a", "GPU-b"], tmp_path, wanted=1)
    held.close()


@pytest.fixture()
def two_cuda_gpus(tmp_path, monkeypatch):
    """torch sees two GPUs; the lock files live under tmp_path; set_device calls are noted."""
    props = [SimpleNamespace(uuid=f"GPU-{c}") for c in "ab"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(devices, "_HELD", [])
    monkeypatch.setattr(devices, "_CLAIMED_GPUS", [])
    return tmp_path / f"flyp-gpu-locks-{os.getuid()}", current


def test_a_job_claims_a_free_gpu_and_makes_it_current(two_cuda_gpus):
    locks, current = two_cuda_gpus
    other = hold(locks, "GPU-a")  # another job holds GPU 0
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)  # the process keeps its one claim
    assert current == [torch.device("cuda", 1)] * 2
    other.close()


def test_an_explicit_gpu_is_claimed_too(two_cuda_gpus, monkeypatch):
    locks, current = two_cuda_gpus
    monkeypatch.setenv("FLYP_GPU_WAIT", "0")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]
    with pytest.raises(UserError, match=r"^cuda:1 is held by other flyp processes"):
        claim_gpu(["GPU-a", "GPU-b"], locks, wanted=1)  # a second job on cuda:1 waits, then fails


def test_each_rank_claims_its_gpu_and_makes_it_current(two_cuda_gpus, monkeypatch):
    from flyp import distributed

    _, current = two_cuda_gpus
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    joined = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda b, **k: joined.append(b))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: None)
    with distributed.process_group("cuda") as here:
        assert here == torch.device("cuda", 0)
    assert current == [here] and joined == ["nccl"]


def test_gpu_jobs_on_one_named_gpu_run_one_at_a_time(tmp_path, fake_gpus):
    out = dry_run(workflow_copy(tmp_path), *SMALL, "runtime={device: 'cuda:1'}", "-p")
    assert "GPU jobs: at most 1 at once, all on cuda:1" in out  # the run's whole gpu resource
    jobs = [(rule, res) for rule, res in job_resources(out) if rule in GPU_RULES]
    assert len(jobs) >= 2 and all("gpu=1" in res for _, res in jobs)  # each job takes all of it
    commands = re.findall(r"flyp (?:finetune|features|evaluate)\b.*", out)
    assert commands and all("--device cuda:1" in c for c in commands)


def test_deterministic_kernels_reach_training_commands_only_when_asked(tmp_path):
    out = dry_run(
        workflow_copy(tmp_path),
        *SMALL,
        "runtime={device: cpu, deterministic: true}",
        "-p",
    )
    flyp, zeroshot = (
        re.search(rf"^Shell command: (.* --method {m} .*)$", out, re.M).group(1)
        for m in ("flyp", "zeroshot")
    )
    assert " --deterministic " in flyp
    assert "--deterministic" not in zeroshot  # nothing trains there
