"""The shared training loop: schedule, weight-decay groups, model selection, resume."""

import math

import pytest
import torch
from torch import nn

from flyp.task import Task
from flyp.training import TrainConfig, cosine_with_warmup, fit, make_optimizer


def test_warmup_then_cosine_per_step():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = cosine_with_warmup(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[-1] < 0.05


def _clip_like_module():
    m = nn.Module()
    m.proj = nn.Linear(4, 4)
    m.ln = nn.LayerNorm(4)
    m.logit_scale = nn.Parameter(torch.ones([]))
    return m


def test_matrices_decay_spares_biases_norms_and_logit_scale():
    m = _clip_like_module()
    opt = make_optimizer(m, lr=1e-3, wd=0.1, decay="matrices")
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert decayed == {id(m.proj.weight)}
    assert opt.param_groups[1]["weight_decay"] == 0.0


def test_decay_all_shrinks_every_parameter_as_the_reference_adamw():
    m = _clip_like_module()
    opt = make_optimizer(m, lr=0.1, wd=0.5, decay="all")
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    for p in m.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decoupled decay moves a weight
    opt.step()
    for name, p in m.named_parameters():  # biases, norms and logit_scale included
        torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5), msg=name)


class ScaleTask(Task):
    """A bare ``logit_scale`` pushed up by the loss, to see whether fit clamps it."""

    def __init__(self, start):
        self.module = nn.Module()
        self.module.logit_scale = nn.Parameter(torch.tensor(start))
        self.train_data = torch.utils.data.TensorDataset(torch.zeros(8, 1))

    def loss(self, batch):
        return -self.module.logit_scale

    def save(self, path, info):
        torch.save({}, path)


@pytest.mark.parametrize("clamp", [True, False])
def test_logit_scale_exceeds_ln_100_only_without_the_clamp(tmp_path, clamp):
    task = ScaleTask(math.log(100) - 0.01)
    cfg = TrainConfig(
        epochs=1, lr=0.1, wd=0.0, batch_size=8, warmup_steps=0, seed=0, clamp_logit_scale=clamp
    )
    fit(
        task,
        cfg,
        out=tmp_path / "m.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        select="last",
        progress=lambda m: None,
    )
    scale = task.module.logit_scale.item()
    if clamp:
        assert scale == pytest.approx(math.log(100))
    else:
        assert scale > math.log(100) + 0.05  # Adam's first step moves it by about lr


class CountingTask(Task):
    """Records the size of every batch it trains on."""

    def __init__(self, n):
        self.module = nn.Linear(1, 1)
        x = torch.arange(n, dtype=torch.float)[:, None]  # (n, 1)
        self.train_data = torch.utils.data.TensorDataset(x)
        self.sizes = []

    def loss(self, batch):
        (x,) = batch
        self.sizes.append(len(x))
        return self.module(x).pow(2).mean()

    def save(self, path, info):
        torch.save({}, path)


def _fit_counting(tmp_path, n, batch_size, epochs=2, warmup_steps=1):
    task = CountingTask(n)
    cfg = TrainConfig(
        epochs=epochs, lr=0.1, wd=0.0, batch_size=batch_size, warmup_steps=warmup_steps, seed=0
    )
    result = fit(
        task,
        cfg,
        out=tmp_path / "m.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        select="last",
        progress=lambda m: None,
    )
    return task.sizes, result.history


def test_the_last_partial_batch_is_trained_on_and_scheduled(tmp_path):
    # Flowers102-like: 1,020 images at batch 256 are 3 full batches and one of 252 an epoch.
    sizes, history = _fit_counting(tmp_path, n=70, batch_size=16, epochs=4, warmup_steps=2)
    assert sizes == [16, 16, 16, 16, 6] * 4  # every example, every epoch
    assert [row["step"] for row in history] == [5, 10, 15, 20]
    # the cosine spans all 20 steps: after epoch 2 it is at step 10, after the last at 0
    progress = (10 - 2) / (20 - 2)
    assert float(history[1]["lr"]) == pytest.approx(
        0.1 * 0.5 * (1 + math.cos(math.pi * progress)), rel=1e-2
    )
    assert float(history[-1]["lr"]) == 0.0


def test_a_last_batch_of_one_example_is_dropped(tmp_path):
    sizes, history = _fit_counting(tmp_path, n=33, batch_size=16)
    assert sizes == [16, 16] * 2  # a contrastive batch of one pair carries no signal
    assert [row["step"] for row in history] == [2, 4]
    sizes, _ = _fit_counting(tmp_path / "one", n=5, batch_size=1)
    assert sizes == [1] * 10  # batch_size 1 is the user's choice: nothing dropped


class ToyTask(Task):
    """Linear regression whose 'validation accuracy' is scripted per epoch."""

    def __init__(self, val_scores, fail_at_epoch=None):
        torch.manual_seed(0)
        self.module = nn.Linear(3, 1)
        x = torch.randn(64, 3)
        self.train_data = torch.utils.data.TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5]))
        self.val_scores, self.fail_at_epoch, self.epoch = list(val_scores), fail_at_epoch, 0
        self.saved = []

    def loss(self, batch):
        x, y = batch
        return ((self.module(x).squeeze(1) - y) ** 2).mean()

    def validate(self):
        self.epoch += 1
        if self.epoch == self.fail_at_epoch:
            raise KeyboardInterrupt("simulated interruption")
        score = self.val_scores[self.epoch - 1]
        return {"val_metric": "accuracy", "val_score": score, "val_loss": 1 - score}

    def save(self, path, info):
        torch.save({"w": self.module.weight.detach().clone(), "info": info}, path)


CFG = TrainConfig(epochs=4, lr=0.05, wd=0.0, batch_size=16, warmup_steps=2, seed=1)


def _load(path):
    return torch.load(path, weights_only=True)


def test_keeps_the_epoch_with_best_val_score(tmp_path):
    task = ToyTask([0.2, 0.9, 0.5, 0.8])
    result = fit(
        task,
        CFG,
        out=tmp_path / "best.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=lambda m: None,
    )
    assert result.best_epoch == 2
    assert _load(tmp_path / "best.pt")["info"]["best_epoch"] == 2
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "epoch,step,lr,train_loss,val_metric,val_score,val_loss,seconds"
    assert len(lines) == 5
    assert not list(tmp_path.glob(".*.resume"))  # resume state removed after success


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    scores = [0.1, 0.2, 0.3, 0.4]
    straight = tmp_path / "a"
    fit(
        ToyTask(scores),
        CFG,
        out=straight / "best.pt",
        log_csv=straight / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=lambda m: None,
    )

    resumed = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        fit(
            ToyTask(scores, fail_at_epoch=3),
            CFG,
            out=resumed / "best.pt",
            log_csv=resumed / "log.csv",
            device=torch.device("cpu"),
            info={},
            progress=lambda m: None,
        )
    assert not (resumed / "best.pt").exists()  # no half-finished output
    messages = []
    task = ToyTask(scores)
    task.epoch = 2  # the scripted scores continue where the interrupted run stopped
    fit(
        task,
        CFG,
        out=resumed / "best.pt",
        log_csv=resumed / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=messages.append,
    )
    assert any("resuming" in m and "after epoch 2" in m for m in messages)
    torch.testing.assert_close(_load(resumed / "best.pt")["w"], _load(straight / "best.pt")["w"])
    assert (resumed / "log.csv").read_text().count("\n") == 5


def test_resume_state_of_other_settings_is_ignored(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(
            ToyTask([0.1] * 4, fail_at_epoch=2),
            CFG,
            out=tmp_path / "best.pt",
            log_csv=tmp_path / "log.csv",
            device=torch.device("cpu"),
            info={},
            progress=lambda m: None,
        )
    messages = []
    other = TrainConfig(**{**CFG.__dict__, "lr": 0.01})
    fit(
        ToyTask([0.1] * 4),
        other,
        out=tmp_path / "best.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=messages.append,
    )
    assert any("ignoring" in m for m in messages)
    assert not any("resuming" in m for m in messages)


def tf32_flags() -> tuple[bool, bool]:
    """(cuBLAS matmuls, cuDNN convolutions) in TF32: process-wide flags, present on CPU builds."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


class FlagTask(ToyTask):
    """ToyTask noting the TF32 flags where the loop computes: the forward, the backward (a
    gradient hook), validation and saving."""

    def __init__(self):
        super().__init__([0.5] * 4)
        self.seen = {"forward": set(), "backward": set(), "validate": set(), "save": set()}

    def loss(self, batch):
        self.seen["forward"].add(tf32_flags())
        loss = super().loss(batch)
        loss.register_hook(lambda grad: self.seen["backward"].add(tf32_flags()))
        return loss

    def validate(self):
        self.seen["validate"].add(tf32_flags())
        return super().validate()

    def save(self, path, info):
        self.seen["save"].add(tf32_flags())
        super().save(path, info)


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_is_the_training_steps_alone_and_restored_after(tmp_path, monkeypatch, tf32):
    """TF32 on (or off: fp32) in the forward, backward and optimizer step; off in validation and
    saving; the process's flags as they were after the run (here torch's defaults, cuDNN's TF32
    on, cuBLAS's off: a scope that neither set nor restored them would show)."""
    from flyp import training

    steps = set()

    def noting_step(*args, **kwargs):
        steps.add(tf32_flags())
        return optimizer_step(*args, **kwargs)

    optimizer_step = training.optimizer_step
    monkeypatch.setattr(training, "optimizer_step", noting_step)
    # Set and restored by hand: torch's cuBLAS flag object has no attribute of its own that
    # monkeypatch could put back (its undo fails with AttributeError).
    saved = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    try:
        task = FlagTask()
        fit(
            task,
            TrainConfig(**{**CFG.__dict__, "tf32": tf32}),
            out=tmp_path / "best.pt",
            log_csv=tmp_path / "log.csv",
            device=torch.device("cpu"),
            info={},
            progress=lambda m: None,
        )
        after = tf32_flags()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert task.seen["forward"] == task.seen["backward"] == steps == {(tf32, tf32)}
    assert task.seen["validate"] == task.seen["save"] == {(False, False)}
    assert after == (False, True)


@pytest.mark.parametrize(
    ("precision", "tf32", "device", "expected"),
    [
        ("fp32", False, "cpu", "fp32"),
        ("fp32", True, "cpu", "fp32"),  # a CPU has no TF32
        ("bf16", False, "cpu", "bf16"),
        ("fp32", True, "cuda", "tf32"),
        ("fp32", False, "cuda:1", "fp32"),
        ("bf16", True, "cuda", "bf16"),
    ],
)
def test_the_arithmetic_of_a_phase(precision, tf32, device, expected):
    from flyp.devices import arithmetic
    from flyp.scoring import eval_arithmetic

    assert arithmetic(precision, tf32, torch.device(device)) == expected
    eval_precision = "tf32" if tf32 and precision == "fp32" else precision
    assert eval_arithmetic(eval_precision, device) == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_checkpoint_records_its_training_arithmetic_and_ranks(tmp_path, precision):
    cfg = TrainConfig(**{**CFG.__dict__, "precision": precision, "tf32": True})
    fit(
        ToyTask([0.5] * 4),
        cfg,
        out=tmp_path / "best.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={"method": "toy"},
        progress=lambda m: None,
    )
    info = _load(tmp_path / "best.pt")["info"]
    assert info["arithmetic"] == {"training": precision}  # tf32 asked for: a CPU has none
    assert info["ranks"] == {"world_size": 1, "sync_bn": False}
    assert info["method"] == "toy"


def test_provenance_names_the_arithmetic_of_each_phase(tiny_tables, tiny_captions, tmp_path):
    """Pretraining (from the pretrained checkpoint's record), finetuning in bf16 autocast, and an
    evaluation asked for in TF32, which on a CPU computes in fp32."""
    import json

    from flyp.evaluation import evaluate_checkpoint
    from flyp.finetuning import finetune
    from flyp.models import create_clip, save_checkpoint

    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained.safetensors"
    record = {"stage": "pretrain", "arithmetic": {"training": "fp32"}}
    save_checkpoint(pretrained, "flyp-tiny-rn10t", create_clip("flyp-tiny-rn10t"), info=record)
    cfg = TrainConfig(
        epochs=1, lr=1e-4, wd=0.0, batch_size=32, warmup_steps=0, seed=0, precision="bf16"
    )
    finetune(
        "embedded",
        tiny_tables,
        tiny_captions,
        pretrained,
        "ft",
        cfg,
        options={},
        out=tmp_path / "ft.safetensors",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        log=lambda m: None,
    )
    evaluate_checkpoint(
        "embedded",
        tiny_tables,
        tmp_path / "ft.safetensors",
        metrics_out=tmp_path / "metrics.json",
        provenance_out=tmp_path / "provenance.json",
        precision="tf32",
        log=lambda m: None,
    )
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["arithmetic"] == {
        "pretraining": "fp32",
        "training": "bf16",
        "evaluation": "fp32",
    }
    assert provenance["ranks"] == {"world_size": 1, "sync_bn": False}
