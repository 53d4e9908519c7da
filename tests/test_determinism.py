"""runtime.deterministic: the switch sets deterministic kernels before CUDA starts, reaches the
training commands, is recorded where it was on (and nowhere when off, so a default checkpoint's
bytes are as before), and a run resumes across it."""

import os

import pytest
import torch
from click.testing import CliRunner

from flyp import cli, devices
from flyp.training import TrainConfig, result_config, run_record

CFG = TrainConfig(epochs=1, lr=1e-3, wd=0.0, batch_size=4, warmup_steps=0, seed=0)


@pytest.fixture()
def restored_determinism(monkeypatch):
    """Torch's determinism flags and CUBLAS_WORKSPACE_CONFIG as they were, after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]


def test_deterministic_algorithms_set_every_switch(restored_determinism):
    torch.backends.cudnn.benchmark = True
    devices.use_deterministic_algorithms()
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # an op without one errors
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic


@pytest.mark.parametrize("flag", [[], ["--deterministic"]])
def test_the_training_commands_set_it_before_choosing_a_device(tmp_path, monkeypatch, flag):
    """`flyp finetune --deterministic` sets the kernels before the device is resolved (here the
    run then stops at its missing pretrained file); without the flag nothing is set."""
    calls = []
    monkeypatch.setattr(devices, "use_deterministic_algorithms", lambda: calls.append("set"))
    real_resolve = devices.resolve_device
    monkeypatch.setattr(
        devices, "resolve_device", lambda d: calls.append("device") or real_resolve(d)
    )
    monkeypatch.setattr("flyp.distributed.resolve_device", devices.resolve_device)
    args = ["finetune", "--benchmark", "embedded", "--data", tmp_path, "--captions", tmp_path]
    args += ["--pretrained", tmp_path / "missing.safetensors", "--method", "ft", "--epochs", 1]
    args += ["--lr", 1e-3, "--wd", 0, "--batch-size", 4, "--device", "cpu"]
    args += ["--out", tmp_path / "best.pt", "--log-csv", tmp_path / "log.csv", *flag]
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert result.exit_code != 0  # the pretrained file is missing
    assert calls == (["set", "device"] if flag else ["device"])


def test_it_is_recorded_only_when_on_and_a_run_resumes_across_it():
    on = TrainConfig(**{**CFG.__dict__, "deterministic": True})
    cpu = torch.device("cpu")
    assert run_record(on, cpu, False)["deterministic"] is True
    assert "deterministic" not in run_record(CFG, cpu, False)  # a default checkpoint: as before
    assert result_config(on) == result_config(CFG)  # not a result-deciding setting
    assert "deterministic" not in result_config(CFG)  # the run's hash is as before


@pytest.mark.parametrize("on", [False, True])
def test_a_run_with_it_sets_it_and_its_checkpoint_says_so(tmp_path, restored_determinism, on):
    from flyp.training import fit
    from tests.test_training import ToyTask

    torch.use_deterministic_algorithms(False)
    fit(
        ToyTask([0.5]),
        TrainConfig(**{**CFG.__dict__, "deterministic": on}),
        out=tmp_path / "best.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=lambda m: None,
    )
    info = torch.load(tmp_path / "best.pt", weights_only=False)["info"]
    assert info.get("deterministic") is (True if on else None)
    assert torch.are_deterministic_algorithms_enabled() is on


def test_provenance_says_deterministic_only_where_training_was(tmp_path):
    from types import SimpleNamespace

    from flyp.evaluation import provenance

    (tmp_path / "manifest.json").write_text('{"tables": {}}')  # data with no tables
    (tmp_path / "c.safetensors").write_bytes(b"weights")
    made = [
        provenance(SimpleNamespace(info=info), tmp_path / "c.safetensors", tmp_path)
        for info in ({}, {"deterministic": True})
    ]
    assert "deterministic" not in made[0]  # a default result's provenance: as before
    assert made[1]["deterministic"] is True
