"""One run over several processes: 2 ranks at batch B/2 each train as 1 rank at batch B, for FLYP,
FT and the collision-masked ablation (gloo on the CPU, as in CI), and FT with the embedded
preset's BatchNorm image tower (resnet10t) when its BatchNorm layers are synchronised.

Two processes are spawned once for the module; each runs the same code as the test process does
in one (the losses and the loop need no second path). The images are the eval transform's: random
crops are drawn by each rank's loader, so a run over ranks crops otherwise (as another worker
count does); what the test compares is the rest: batches, caption draws, loss, gradients, steps.
"""

from __future__ import annotations

import copy
import os
import re
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from flyp import distributed
from flyp.io import UserError
from flyp.methods import get_method
from flyp.training import RankBatches, TrainConfig, fit, step_loss
from tests.test_gpu_jobs import fake_gpus, job_resources  # noqa: F401 (a fixture)
from tests.test_imagenet import dry_run, workflow_copy

METHODS = ["flyp", "ft", "flyp_no_collisions"]
WORLD = 2
BATCH = 16  # the global batch of the gradient check
ROWS = list(range(3, 3 + BATCH))  # classes repeat within and across the halves: collisions
# 96 training images at batch 20: 4 full batches and one of 16 an epoch (split 8 + 8)
CFG = TrainConfig(epochs=2, lr=1e-3, wd=0.1, batch_size=20, warmup_steps=2, seed=0)
# One epoch of FT with the embedded model (resnet10t, BatchNorm), 5 steps: BatchNorm over the
# global batch (sync_bn, the default) or over each rank's slice
BN_CFGS = {
    "sync": TrainConfig(epochs=1, lr=1e-3, wd=0.1, batch_size=20, warmup_steps=2, seed=0),
    "per-rank": TrainConfig(
        epochs=1, lr=1e-3, wd=0.1, batch_size=20, warmup_steps=2, seed=0, sync_bn=False
    ),
}


def vit_context(tables, captions, pretrained):
    """A method context on the tiny benchmark with the ``pretrained`` model (the tiny ViT: no
    BatchNorm; or the embedded resnet10t) and deterministic training images."""
    from flyp.datasets import get_benchmark
    from flyp.methods import Context
    from flyp.models import checkpoint_transforms, get_tokenizer, load_checkpoint

    ckpt = load_checkpoint(pretrained)
    _, eval_tf = checkpoint_transforms(ckpt)
    return Context(
        benchmark=get_benchmark("embedded"),
        pretrained=ckpt,
        data_dir=tables,
        captions_dir=captions,
        device=torch.device("cpu"),
        tokenizer=get_tokenizer(ckpt.model_name),
        train_transform=eval_tf,
        eval_transform=eval_tf,
        seed=0,
    )


def loss_and_grads(method: str, ctx) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss of the global batch ROWS and the gradients, as fit's step computes them, each
    rank on its slice (and in one process on all of it)."""
    torch.manual_seed(0)
    task = get_method(method).task(ctx)
    task.module.train()
    items = [task.train_data[i] for i in ROWS]
    batch = [distributed.local_rows(torch.stack(column)) for column in zip(*items, strict=True)]
    torch.manual_seed(1)  # the caption draws
    compute_loss = step_loss(task)  # held until after backward, which it synchronises
    loss = compute_loss(batch)
    loss.backward()
    grads = {
        name: p.grad.clone() for name, p in task.module.named_parameters() if p.grad is not None
    }
    return float(distributed.mean_over_ranks(loss.detach())), grads


def train(method: str, ctx, out_dir, progress=lambda message: None, cfg=CFG, name=None) -> None:
    torch.manual_seed(0)
    task = get_method(method).task(ctx)
    fit(
        task,
        cfg,
        out=out_dir / f"{name or method}.safetensors",
        log_csv=out_dir / f"{name or method}.csv",
        device=torch.device("cpu"),
        info={"method": method},
        select="last",
        progress=progress,
    )


class StopAtSecondValidation:
    """A task's validate that stops the run at epoch 2, as a killed job stops: epoch 1's resume
    state stays behind."""

    def __init__(self, validate):
        self.validate, self.calls = validate, 0

    def __call__(self):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt("simulated interruption")
        return self.validate()


def _rank_main(rank: int, port: int, paths: tuple, rn_pretrained, out_dir) -> None:
    """One of the spawned ranks, set up as torchrun sets up each process."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    with distributed.process_group("cpu"):
        ctx = vit_context(*paths)
        for method in METHODS:
            loss, grads = loss_and_grads(method, ctx)
            torch.save({"loss": loss, "grads": grads}, out_dir / f"{method}-grads-{rank}.pt")
            train(method, ctx, out_dir)
        messages = []  # rank 0's; the others say nothing
        train("ft", ctx, out_dir / "resumed", messages.append)  # from a one-process run's state
        if rank == 0:
            (out_dir / "resumed" / "messages.txt").write_text("\n".join(messages))
        rn_ctx = vit_context(*paths[:2], rn_pretrained)
        for name, cfg in BN_CFGS.items():
            train("ft", rn_ctx, out_dir, cfg=cfg, name=f"rn-{name}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vit_pretrained(tmp_path_factory):
    from flyp.models import create_clip, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "pretrained.safetensors"
    save_checkpoint(
        path, "flyp-fixture-vit", create_clip("flyp-fixture-vit"), info={"stage": "test"}
    )
    return path


@pytest.fixture(scope="module")
def paths(tiny_tables, tiny_captions, vit_pretrained):
    return tiny_tables, tiny_captions, vit_pretrained


@pytest.fixture(scope="module")
def two_ranks(paths, tiny_pretrained, tmp_path_factory):
    """What 2 spawned ranks computed and wrote, for every method."""
    out = tmp_path_factory.mktemp("ranks")
    torch.manual_seed(0)
    task = get_method("ft").task(vit_context(*paths))
    task.validate = StopAtSecondValidation(task.validate)
    with pytest.raises(KeyboardInterrupt):
        fit(
            task,
            CFG,
            out=out / "resumed" / "ft.safetensors",
            log_csv=out / "resumed" / "ft.csv",
            device=torch.device("cpu"),
            info={"method": "ft"},
            select="last",
            progress=lambda message: None,
        )
    mp.spawn(_rank_main, args=(free_port(), paths, tiny_pretrained, out), nprocs=WORLD)
    return out


def without_key_bias(name: str, *weights: torch.Tensor) -> list[torch.Tensor]:
    """The weights, less the key third of an attention's ``in_proj_bias`` (query, key, value).
    The key bias adds the same q . b to all logits of a query, which softmax ignores: its gradient
    is 0 exactly, in floats rounding noise, which AdamW (dividing by the noise's own root mean
    square) turns into steps of up to lr either way that change with any summation order."""
    if not name.endswith("attn.in_proj_bias"):
        return list(weights)
    return [torch.cat([w.view(3, -1)[0], w.view(3, -1)[2]]) for w in weights]


def largest_differences(one: dict, two: dict) -> list[tuple[str, float]]:
    """The three weights that differ most between two checkpoints, by largest absolute error."""
    errors = {}
    for name in one:
        a, b = without_key_bias(name, one[name], two[name])
        errors[name] = float((a - b).abs().max())
    return sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_at_half_the_batch_give_the_loss_and_gradients_of_one(method, paths, two_ranks):
    one_loss, one_grads = loss_and_grads(method, vit_context(*paths))
    for rank in range(WORLD):
        got = torch.load(two_ranks / f"{method}-grads-{rank}.pt")
        assert got["loss"] == pytest.approx(one_loss, rel=1e-5)
        assert got["grads"].keys() == one_grads.keys()
        errors = {name: relative_error(got["grads"][name], g) for name, g in one_grads.items()}
        assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_train_to_the_weights_of_one(method, paths, two_ranks, tmp_path):
    train(method, vit_context(*paths), tmp_path)
    one = load_file(tmp_path / f"{method}.safetensors")
    two = load_file(two_ranks / f"{method}.safetensors")
    assert one.keys() == two.keys()
    start = load_file(paths[2])
    assert any(not torch.equal(one[k], start[k]) for k in start)  # the steps moved the weights
    assert largest_differences(one, two)[0][1] < 1e-5, largest_differences(one, two)
    # rank 0 logged the loss of the global batches: the mean over ranks of theirs
    one_log = (tmp_path / f"{method}.csv").read_text().splitlines()
    two_log = (two_ranks / f"{method}.csv").read_text().splitlines()
    losses = [[float(row.split(",")[3]) for row in log[1:]] for log in (one_log, two_log)]
    assert losses[1] == pytest.approx(losses[0], abs=2e-5)


def largest_relative_differences(one: dict, two: dict) -> list[tuple[str, float]]:
    """The three tensors (weights, BatchNorm's running statistics) that differ most between two
    checkpoints, by relative error (of the whole tensor)."""
    errors = {name: relative_error(two[name].double(), one[name].double()) for name in one}
    return sorted(errors.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.slow
def test_two_ranks_with_synchronised_batchnorm_train_to_the_weights_of_one(
    paths, tiny_pretrained, two_ranks, tmp_path
):
    """FT of the embedded model (resnet10t) for an epoch: with BatchNorm over the global batch
    (sync_bn) 2 ranks at half the batch end where 1 process does; over each rank's slice they
    do not (the switch is what makes them agree)."""
    train("ft", vit_context(*paths[:2], tiny_pretrained), tmp_path, cfg=BN_CFGS["sync"])
    one = load_file(tmp_path / "ft.safetensors")
    start = load_file(tiny_pretrained)
    assert any(not torch.equal(one[k], start[k]) for k in start)  # the steps moved the weights
    synced = load_file(two_ranks / "rn-sync.safetensors")
    assert synced.keys() == one.keys()
    assert largest_relative_differences(one, synced)[0][1] <= 1e-4, largest_relative_differences(
        one, synced
    )
    per_rank = load_file(two_ranks / "rn-per-rank.safetensors")
    assert largest_relative_differences(one, per_rank)[0][1] > 1e-2


@pytest.mark.slow
def test_two_ranks_resume_a_run_where_one_stopped(paths, two_ranks, tmp_path):
    train("ft", vit_context(*paths), tmp_path)
    one = load_file(tmp_path / "ft.safetensors")
    resumed = load_file(two_ranks / "resumed" / "ft.safetensors")
    assert largest_differences(one, resumed)[0][1] < 1e-5, largest_differences(one, resumed)
    assert "after epoch 1" in (two_ranks / "resumed" / "messages.txt").read_text()
    log = (two_ranks / "resumed" / "ft.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2"]  # epoch 1 from the state


def test_ranks_hold_consecutive_slices_of_the_global_batches():
    order = list(range(23))  # batch 8: two full batches and one of 7
    one = list(RankBatches(order, 8))
    assert one == [order[:8], order[8:16], order[16:]]
    two = [list(RankBatches(order, 8, rank, 2)) for rank in range(2)]
    assert two[0] == [order[:4], order[8:12], order[16:19]]
    assert two[1] == [order[4:8], order[12:16], order[19:22]]  # 6 of the last 7: as many each
    assert len(RankBatches(order, 8, 0, 2)) == 3
    assert list(RankBatches(list(range(17)), 8)) == [list(range(8)), list(range(8, 16))]
    assert list(RankBatches(list(range(17)), 8, 1, 2)) == [list(range(4, 8)), list(range(12, 16))]


def test_a_batch_the_ranks_cannot_share_equally_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(UserError, match="batch_size 20: not divisible by the 3 processes"):
        fit(
            None,
            CFG,
            out=tmp_path / "m.pt",
            log_csv=tmp_path / "log.csv",
            device=torch.device("cpu"),
            info={},
        )


@pytest.mark.usefixtures("fake_gpus")
@pytest.mark.parametrize(
    ("runtime", "switches"),
    [
        # grad_checkpointing auto (the default): decided by the job on its GPU (flyp.memplan)
        ("{gpus_per_job: 1}", " --no-tf32 --no-compile --grad-checkpointing auto "),
        ("{gpus_per_job: 2}", " --no-tf32 --no-compile --grad-checkpointing auto --sync-bn "),
        ("{gpus_per_job: 1, grad_checkpointing: false}", " --no-compile --no-grad-checkpointing "),
        ("{gpus_per_job: 2, sync_bn: false, tf32: true}", " --tf32 --no-compile "),
    ],
)
def test_training_jobs_run_under_torchrun_above_one_gpu(tmp_path, runtime, switches):
    """ImageNet's jobs (a preset that reproduces the reference: fp32, unless runtime.tf32 says
    otherwise); BatchNorm's synchronisation is a switch of torchrun's jobs alone."""
    gpus = int(re.search(r"gpus_per_job: (\d)", runtime).group(1))
    out = dry_run(
        workflow_copy(tmp_path), "seeds=[0]", "methods=[zeroshot,flyp]", f"runtime={runtime}", "-p"
    )
    flyp, zeroshot = (
        re.search(rf"^Shell command: (.* --method {m} .*)$", out, re.M).group(1)
        for m in ("flyp", "zeroshot")
    )
    launch = "torchrun --standalone --nproc_per_node 2 -m flyp.cli" if gpus > 1 else "flyp"
    assert flyp.startswith(f"{launch} finetune ")
    assert switches in flyp
    assert ("sync-bn" in flyp) == (gpus > 1)
    assert "--no-sync-bn" in flyp if "sync_bn: false" in runtime else "--no-sync-bn" not in flyp
    assert zeroshot.startswith("flyp finetune ")  # nothing to train: one process
    assert "tf32" not in zeroshot
    gpu = {
        re.search(r"method=(\w+)", block).group(1): re.search(r"\bgpu=(\d+)", block).group(1)
        for block in re.split(r"\n(?=rule )", out)
        if block.startswith("rule finetune:")
    }
    assert gpu == {"flyp": str(gpus), "zeroshot": "1"}  # one process: one GPU
    assert all("gpu=1" in r for rule, r in job_resources(out) if rule == "features")


def test_a_training_jobs_threads_are_shared_among_its_ranks(monkeypatch):
    from flyp.cli import _threads_per_rank

    assert _threads_per_rank(8) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # as torchrun sets it
    assert [_threads_per_rank(n) for n in (8, 2, 0)] == [2, 1, 0]  # 0: torch's default


class BatchNormWithItsOwnForward(torch.nn.BatchNorm2d):
    """As timm's BatchNormAct2d: a BatchNorm subclass whose forward does more."""

    def forward(self, x):
        return torch.relu(super().forward(x))


@pytest.mark.parametrize(
    ("device", "synced"), [("cpu", distributed.GlobalBatchNorm), ("cuda", torch.nn.SyncBatchNorm)]
)
def test_batchnorm_layers_are_synchronised_in_place_with_their_tensors(device, synced):
    from flyp.models import create_clip

    torch.manual_seed(0)
    clip = create_clip("flyp-tiny-rn10t")
    layers = {
        n: m
        for n, m in clip.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }
    tensors = {n: id(t) for n, t in [*clip.named_parameters(), *clip.named_buffers()]}
    visual = clip.visual
    assert distributed.sync_batchnorm(clip, torch.device(device))
    assert clip.visual is visual  # the rest of the module is the same objects
    converted = dict(clip.named_modules())
    assert all(type(converted[n]) is synced for n in layers)
    assert tensors == {n: id(t) for n, t in [*clip.named_parameters(), *clip.named_buffers()]}
    assert not distributed.sync_batchnorm(torch.nn.Linear(2, 2), torch.device(device))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), BatchNormWithItsOwnForward(4))
    with pytest.raises(UserError, match=r"^sync_bn: 0.1 is a BatchNormWithItsOwnForward, .*bn\)$"):
        distributed.sync_batchnorm(torch.nn.Sequential(model), torch.device(device))


def test_a_global_batchnorm_in_one_process_is_a_batchnorm():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(4)
    synced = distributed.converted_batchnorm(copy.deepcopy(plain), distributed.GlobalBatchNorm)
    x = torch.randn(6, 4, 3, 3)
    for mode in (True, False):
        plain.train(mode), synced.train(mode)
        assert torch.equal(plain(x), synced(x))
    assert torch.equal(plain.running_var, synced.running_var)
