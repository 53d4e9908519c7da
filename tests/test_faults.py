"""Faults and misuse: each case ends in one clear line, never in a silent wrong result."""

import json
import os
import re
import stat

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from flyp.cli import main
from flyp.devices import resolve_device
from flyp.io import UserError, atomic_path, write_text
from flyp.methods import get_method
from flyp.methods.l2sp import L2SP
from flyp.models import FORMAT, load_checkpoint, save_checkpoint
from flyp.task import Task
from flyp.training import TrainConfig, fit, is_better
from flyp.workflow.config import load_params
from tests.conftest import ROOT

SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_get_the_mode_of_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "metrics.json", "{}\n")
        with atomic_path(tmp_path / "table.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for name in ("metrics.json", "table.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


# -- a diverged run never becomes a number ----------------------------------------------------


class DivergingTask(Task):
    """A linear regression whose loss (or weights) turn non-finite at a given training step."""

    def __init__(self, bad_step, what="loss"):
        torch.manual_seed(0)
        self.module = nn.Linear(2, 1)
        self.train_data = torch.utils.data.TensorDataset(torch.randn(32, 2))
        self.bad_step, self.what, self.steps = bad_step, what, 0

    def loss(self, batch):
        (x,) = batch
        self.steps += 1
        loss = self.module(x).pow(2).mean()
        if self.steps == self.bad_step and self.what == "loss":
            return loss * float("nan")
        if self.steps == self.bad_step:  # weights blow up, the loss (bias only) stays finite
            with torch.no_grad():
                self.module.weight.fill_(float("inf"))
        if self.steps >= self.bad_step:
            return self.module.bias.pow(2).sum()
        return loss

    def validate(self):
        return {"val_metric": "accuracy", "val_score": 0.5, "val_loss": 1.0}

    def save(self, path, info):
        torch.save({}, path)


INFO = {"method": "flyp", "benchmark": "toy", "seed": 3, "shots": None}


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("loss", r"training loss nan at epoch 2, step 6"),
        ("weights", r"non-finite weights at epoch 2, step 8"),
    ],
)
def test_diverged_training_stops_with_one_line_and_no_checkpoint(tmp_path, what, expected):
    cfg = TrainConfig(epochs=3, lr=0.01, wd=0.0, batch_size=8, warmup_steps=0, seed=0)
    out = tmp_path / "best.safetensors"
    with pytest.raises(UserError, match=expected) as err:
        fit(
            DivergingTask(bad_step=6, what=what),
            cfg,
            out=out,
            log_csv=tmp_path / "log.csv",
            device=torch.device("cpu"),
            info=INFO,
            progress=lambda _: None,
        )
    message = str(err.value)
    assert "\n" not in message
    assert "method flyp, benchmark toy, seed 3" in message
    assert "learning rate (lr 0.01)" in message and "precision fp32" in message
    assert not out.exists() and not (tmp_path / "log.csv").exists()


NAN = float("nan")


@pytest.mark.parametrize("select", ["metric", "val_loss", "last"])
def test_a_non_finite_validation_score_is_never_best(select):
    kept = {"val_metric": "accuracy", "val_score": 0.1, "val_loss": 2.0}
    for val in (
        {"val_metric": "accuracy", "val_score": NAN, "val_loss": 1.0},
        {"val_metric": "accuracy", "val_score": float("inf"), "val_loss": 1.0},
    ):
        assert not is_better(select, val, None)
        assert not is_better(select, val, kept)
    nan_loss = {"val_metric": "accuracy", "val_score": 0.9, "val_loss": NAN}
    assert is_better(select, nan_loss, kept) == (select != "val_loss")


class NanValidationTask(DivergingTask):
    def validate(self):
        return {"val_metric": "accuracy", "val_score": NAN, "val_loss": NAN}


def test_a_run_without_a_finite_validation_score_writes_no_checkpoint(tmp_path):
    cfg = TrainConfig(epochs=2, lr=0.01, wd=0.0, batch_size=8, warmup_steps=0, seed=0)
    out = tmp_path / "best.safetensors"
    with pytest.raises(UserError, match="no epoch of the run .* has a finite validation score"):
        fit(
            NanValidationTask(bad_step=10**6),
            cfg,
            out=out,
            log_csv=tmp_path / "log.csv",
            device=torch.device("cpu"),
            info=INFO,
            progress=lambda _: None,
        )
    assert not out.exists()


def test_checkpoint_content_hash_is_verified(tmp_path):
    torch.manual_seed(0)
    clip, head = {"w": torch.randn(64, 8), "s": torch.tensor(1.0)}, nn.Linear(8, 3)
    path, again = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(path, "toy", clip, head, {"seed": 0})
    save_checkpoint(again, "toy", clip, head, {"seed": 0})
    assert path.read_bytes() == again.read_bytes()  # the same weights give the same file
    assert torch.equal(load_checkpoint(path).clip["w"], clip["w"])

    data = bytearray(path.read_bytes())
    data[-100:-60] = bytes(range(40))  # random bytes in the tensor data, header intact
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"a\.safetensors: the tensors do not match") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_checkpoint_without_a_content_hash_still_loads(tmp_path):
    path = tmp_path / "old.safetensors"
    meta = {"format": FORMAT, "model_name": "toy", "info": {}}
    save_file({"clip.w": torch.ones(2, 2)}, str(path), metadata={"flyp": json.dumps(meta)})
    assert torch.equal(load_checkpoint(path).clip["w"], torch.ones(2, 2))


# -- every method declares its options ---------------------------------------------------------


def _finetune(tmp_path, method, *options, device="auto"):
    args = [
        "finetune",
        "--benchmark",
        "embedded",
        "--data",
        tmp_path,
        "--captions",
        tmp_path,
        "--pretrained",
        tmp_path / "missing.safetensors",
        "--method",
        method,
        "--epochs",
        1,
        "--lr",
        1e-3,
        "--wd",
        0,
        "--batch-size",
        4,
        "--out",
        tmp_path / "best.safetensors",
        "--log-csv",
        tmp_path / "log.csv",
        "--device",
        device,
    ]
    for option in options:
        args += ["-o", option]
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize(
    ("method", "option", "needles"),
    [
        (
            "l2sp",
            "lamda=0.5",
            [
                "method l2sp: unknown option 'lamda'",
                "valid options: lambda (float >= 0, default 0.1)",
            ],
        ),
        ("l2sp", "lambda=lots", ["option 'lambda': expected float >= 0, got 'lots'"]),
        ("l2sp", "lambda=-1", ["option 'lambda': expected float >= 0, got '-1'"]),
        ("ft", "lambda=0.5", ["method ft: unknown option 'lambda'", "valid options: none"]),
        ("lp", "feature=x", ["valid options: features (str, required)"]),
        ("lpft", "lr_scale=0.1", ["valid options: init_head (str, required)"]),
    ],
)
def test_unknown_or_ill_typed_method_options_are_refused_on_the_command_line(
    tmp_path, method, option, needles
):
    result = _finetune(tmp_path, method, option)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0]
    assert not (tmp_path / "best.safetensors").exists()


@pytest.fixture()
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"l2sp": {"lamda": 0.5}},
            r"params.yaml: presets.embedded.method_options.l2sp.lamda: "
            r"unknown option of method l2sp; valid options: lambda \(float",
        ),
        (
            {"l2sp": {"lambda": "strong"}},
            r"method_options.l2sp.lambda: option 'lambda': expected "
            r"float >= 0, got 'strong'",
        ),
        ({"lp": {"features": "x.safetensors"}}, r"method_options.lp.features: unknown option"),
        ({"ft": {"lr": "fast"}}, r"method_options.ft.lr: 'fast' is not of type 'number'"),
        ({"lpft": {"lr_scale": 0}}, r"method_options.lpft.lr_scale: 0 is less than or equal"),
    ],
)
def test_unknown_or_ill_typed_method_options_are_refused_in_params(params, options, expected):
    params["presets"]["embedded"]["method_options"] = options
    with pytest.raises(UserError, match=expected) as err:
        load_params(params, SCHEMA)
    assert "\n" not in str(err.value)


def test_declared_and_training_method_options_are_accepted(params):
    options = {
        "l2sp": {"lambda": 0.5, "lr": 1e-4, "grad_clip": 1.0},
        "lpft": {"lr_scale": 0.1},
        "ft": {"epochs": 3, "precision": "bf16", "decay": "all"},
    }
    params["presets"]["embedded"]["method_options"] = options
    assert load_params(params, SCHEMA)["method_options"] == options
    L2SP.check_options({"lambda": "0.5"})
    get_method("lp").check_options({"features": "features.safetensors"})


# -- parameters reaching the shell are validated and quoted -------------------------------------


@pytest.mark.parametrize("device", ["cpu; touch pwned; true", "gpu", "cuda:x", "CUDA"])
def test_runtime_device_is_validated_by_the_schema(params, device):
    params["runtime"] = {"device": device}
    with pytest.raises(UserError, match=r"params.yaml: runtime.device: .* does not match"):
        load_params(params, SCHEMA)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_runtime_device_accepts_auto_cpu_cuda_and_cuda_n(params, device):
    params["runtime"] = {"device": device}
    assert load_params(params, SCHEMA)["runtime"]["device"] == device


@pytest.mark.parametrize(
    ("gpus", "device", "expected"),
    [
        (0, "cuda", r"--device cuda: this machine has no CUDA GPU"),
        (0, "cuda:0", r"--device cuda:0: this machine has no CUDA GPU"),
        (1, "cuda:1", r"--device cuda:1: this machine has 1 CUDA GPU\(s\), cuda:0 to cuda:0"),
        (0, "gpu", r"--device 'gpu': expected auto, cpu, cuda or cuda:N"),
        (0, "cpu; touch pwned", r"expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_a_device_the_machine_lacks_is_one_line(monkeypatch, gpus, device, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(UserError, match=expected):
        resolve_device(device)


def test_device_cuda_without_a_gpu_stops_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    result = _finetune(tmp_path, "ft", device="cuda")  # the pretrained file is missing too
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "--device cuda: this machine has no CUDA GPU" in errors[0]


# Shell values built from several arguments, each quoted where it is built (workflow/rules/*.smk)
PREQUOTED = {
    "params.args",
    "params.train",
    "params.options",
    "params.source",
    "params.sums",
    "params.speed",
    "params.zeroshot_scores",
    "params.sweep",
    "params.train_data",
    "params.evaluate",
    "params.launch",
    "params.std_ddof",
}  # launch: torchrun and its integer arguments, or flyp; std_ddof: "" or an integer option


def test_every_parameter_in_a_shell_command_is_quoted():
    unquoted = []
    for path in sorted((ROOT / "workflow/rules").glob("*.smk")):
        # shell commands are plain string literals on lines of their own (f-strings are Python)
        commands = [line for line in path.read_text().splitlines() if line.strip().startswith('"')]
        for field, quoted in re.findall(
            r"\{((?:params|resources|wildcards)\.\w+)(:q)?\}", "\n".join(commands)
        ):
            if not quoted and field not in PREQUOTED:
                unquoted.append(f"{path.name}: {field}")
    assert not unquoted
