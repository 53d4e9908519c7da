"""GPUs as Snakemake resources: dry runs of the ImageNet fixture with the two profiles under
workflow/profiles/, checking what each job would be submitted with: cores, memory, wall-clock
minutes (params.yaml presets.imagenet.resources), GPUs, SLURM partition and account, and for a
training run over 2 GPUs the sbatch line the SLURM plugin builds from them."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import ROOT, training_methods

PROFILES = ROOT / "workflow" / "profiles"
SIZES = yaml.safe_load((ROOT / "params.yaml").read_text())["presets"]["imagenet"]["resources"]
KIND = {
    "download": "fetch",
    "extract": "fetch",
    "prepare_data": "prepare",
    "resize_train": "prepare",  # the ImageNet fixture's resized train images
    "pretrain": "pretrain",
    "captions": "light",
    "report": "light",
    "reuse_seedless": "light",
    "eval_cache": "infer",
    "features": "infer",
    "evaluate_ensemble": "infer",
}
TRAINING = training_methods()  # the registered methods that train
# A dry run gives every job at most --cores cores (1 when unset); a SLURM run caps none.
SLURM_CORES = "256"


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    """The ImageNet fixture (miniature archives and its config overlay), written once."""
    out = tmp_path_factory.mktemp("imagenet") / "fixture"
    subprocess.run(
        ["flyp", "fixture", "--benchmark", "imagenet", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what a login node without GPUs shows


def dry_run(fixture: Path, profile: str, *args: str, check: bool = True):
    done = subprocess.run(
        [
            "snakemake",
            "-n",
            "--profile",
            str(PROFILES / profile),
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(fixture),
            "--configfile",
            str(ROOT / "params.yaml"),
            str(fixture / "fixture.yaml"),
            *args,
            "--",
            "results/table.csv",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def jobs(out: str) -> list[dict]:
    """Rule, wildcards, resources and shell command of every job a dry run lists."""
    found = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out)[1:]:
        resources = re.search(r"^\s+resources: (.*)$", block, re.M).group(1)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        found.append(
            {
                "rule": re.match(r"(?:local)?rule (\w+):", block).group(1),
                "wildcards": dict(w.split("=") for w in wildcards.group(1).split(", "))
                if wildcards
                else {},
                "resources": dict(r.split("=", 1) for r in resources.split(", ")),
                "shell": shell.group(1) if shell else "",
            }
        )
    return found


def kind(job: dict) -> str:
    if job["rule"] == "finetune":
        return "finetune" if job["wildcards"]["method"] in TRAINING else "infer"
    return KIND[job["rule"]]


def gpus(job: dict) -> int:
    return int(job["resources"].get("gpu", 0))


def check_sizes(job: dict, cores: int) -> None:
    """mem_mb and runtime as the preset sets them for the job's kind; its threads (what the
    command is given) too, up to the cores it may have."""
    size = SIZES[kind(job)]
    assert int(job["resources"]["mem_mb"]) == size["mem_mb"], job
    assert int(job["resources"]["runtime"]) == size["runtime"], job
    threads = re.search(r"--(?:threads|workers) (\d+)", job["shell"])
    if threads:
        assert int(threads.group(1)) == min(size["threads"], cores), job


def test_slurm_jobs_ask_for_their_cores_memory_time_gpus_partition_and_account(fixture_dir, no_gpu):
    out = dry_run(
        fixture_dir, "slurm", "--cores", SLURM_CORES, "--config", "runtime={gpus_per_job: 2}"
    ).stdout
    listed = jobs(out)
    assert {j["rule"] for j in listed} >= {
        "download",
        "extract",
        "prepare_data",
        "resize_train",
        "pretrain",
        "captions",
        "eval_cache",
        "features",
        "finetune",
        "evaluate_ensemble",
        "report",
    }
    for job in listed:
        check_sizes(job, int(SLURM_CORES))
        assert job["resources"]["slurm_partition"] == "CHANGE_ME_partition", job
        assert job["resources"]["slurm_account"] == "CHANGE_ME_account", job
        trains = job["rule"] == "finetune" and job["wildcards"]["method"] in TRAINING
        on_gpu = job["rule"] in {"features", "finetune", "evaluate_ensemble"}
        # this machine has no GPU, yet auto asks for them: the nodes have them
        assert gpus(job) == (2 if trains else 1 if on_gpu else 0), job
        if on_gpu:
            assert job["resources"]["device"] == "cuda" and "--device cuda " in job["shell"], job
        # one process per GPU: torchrun for a training run, one process otherwise
        assert (
            job["shell"].startswith("torchrun --standalone --nproc_per_node 2 -m flyp.cli ")
            == trains
        ), job

    # The sbatch line the plugin builds for a training job: 2 GPUs, one task holding both (the
    # jobstep runs the command once; torchrun starts a process per GPU), cores, memory and time.
    submit = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    flyp = next(j for j in listed if j["rule"] == "finetune" and j["wildcards"]["method"] == "flyp")
    job = stand_in(flyp, threads=SIZES["finetune"]["threads"])
    call = submit.get_submit_command(
        job,
        {
            "run_uuid": "u",
            "slurm_logfile": "log",
            "comment_str": "rule_finetune",
            "account": f"-A {flyp['resources']['slurm_account']}",
            "partition": f"-p {flyp['resources']['slurm_partition']}",
            "workdir": ".",
        },
    )
    call += set_gres_string(job)
    assert "-A CHANGE_ME_account -p CHANGE_ME_partition" in call
    assert f"-t {SIZES['finetune']['runtime']} " in call
    assert f"--mem {SIZES['finetune']['mem_mb']} " in call
    assert f"--cpus-per-task={SIZES['finetune']['threads']}" in call
    assert call.endswith(" --gpus=2") and "--ntasks" not in call, call


def stand_in(job: dict, threads: int) -> SimpleNamespace:
    """What the plugin reads of a job: its threads and resources (numbers as numbers)."""

    class Resources(dict):
        __getattr__ = dict.__getitem__

    resources = Resources({k: int(v) if v.isdigit() else v for k, v in job["resources"].items()})
    return SimpleNamespace(resources=resources, threads=threads)


def test_workstation_runs_one_job_per_gpu(fixture_dir, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"  # a host with two GPUs, as nvidia-smi -L lists them
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-a)'\n"
        "echo 'GPU 1: NVIDIA H200 (UUID: GPU-b)'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # (the profile's cores: all, set here to the 16 cores of a host the test can assume)
    done = dry_run(fixture_dir, "workstation", "--cores", "16")
    assert "GPU jobs: at most 2 at once" in done.stderr
    listed = jobs(done.stdout)
    for job in listed:
        # a job on a GPU takes at most its GPU's share of the cores: 8 of 16 with 2 GPUs, so
        # that both GPUs are busy at once
        check_sizes(job, 8 if gpus(job) else 16)
        assert "slurm_partition" not in job["resources"], job
        on_gpu = job["rule"] in {"features", "finetune", "evaluate_ensemble"}
        assert gpus(job) == (1 if on_gpu else 0), job
        assert not job["shell"].startswith("torchrun"), job
    # one run over both GPUs: a training job takes 2 (and every core), zero-shot and the linear
    # probe 1
    listed = jobs(
        dry_run(
            fixture_dir, "workstation", "--cores", "16", "--config", "runtime={gpus_per_job: 2}"
        ).stdout
    )
    for job in (j for j in listed if j["rule"] == "finetune"):
        assert gpus(job) == (2 if job["wildcards"]["method"] in TRAINING else 1), job
        check_sizes(job, 8 * gpus(job))


def test_device_cuda_without_a_gpu_is_one_line_at_parse_time(fixture_dir, no_gpu):
    done = dry_run(fixture_dir, "workstation", "--config", "runtime={device: cuda}", check=False)
    assert done.returncode != 0
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()]
    assert errors == [
        "error: params.yaml: runtime.device: cuda, but this machine has no GPU "
        "(CUDA_VISIBLE_DEVICES and nvidia-smi -L show none); use auto or cpu, or "
        "a cluster profile (--profile workflow/profiles/slurm)"
    ], done.stderr
    # a login node without GPUs may submit GPU jobs to SLURM
    dry_run(fixture_dir, "slurm", "--config", "runtime={device: cuda}")


def test_a_preset_without_a_job_size_is_one_line():
    from flyp.io import UserError
    from flyp.workflow.config import load_params, read_yaml

    params = read_yaml(ROOT / "params.yaml")
    params["benchmark"] = "imagenet"
    del params["presets"]["imagenet"]["resources"]["infer"]
    with pytest.raises(
        UserError,
        match=r"^params.yaml: presets.imagenet.resources.infer: not set; "
        r"expected \{threads: N, mem_mb: N, runtime: minutes\}$",
    ):
        load_params(params, ROOT / "workflow" / "schemas" / "params.schema.yaml")
