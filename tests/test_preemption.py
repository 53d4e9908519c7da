"""Training that survives pre-emption: a run killed at any step (kill -9), or stopped by SIGTERM /
SIGUSR1 as SLURM does before it pre-empts a job, resumes mid-epoch, also with another worker count,
to a checkpoint byte-identical to an uninterrupted run's."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flyp.training import RankBatches, SeededItems, TrainConfig, result_config

EPOCHS = 3  # 96 training images at batch 16: 6 steps an epoch, 18 in all


def finetune_cmd(tables, captions, pretrained, out: Path, *, workers=0, minutes=0.0):
    return [
        "flyp",
        "finetune",
        "--benchmark",
        "embedded",
        "--data",
        str(tables),
        "--captions",
        str(captions),
        "--pretrained",
        str(pretrained),
        "--method",
        "flyp",
        "--epochs",
        str(EPOCHS),
        "--lr",
        "3e-4",
        "--wd",
        "0.1",
        "--batch-size",
        "16",
        "--warmup-steps",
        "2",
        "--seed",
        "5",
        "--out",
        str(out / "best.safetensors"),
        "--log-csv",
        str(out / "log.csv"),
        "--threads",
        "1",
        "--device",
        "cpu",
        "--workers",
        str(workers),
        "--checkpoint-minutes",
        str(minutes),
    ]


def state_step(state: Path) -> int:
    """Steps the resume state at ``state`` stands after (0 while there is none)."""
    try:
        saved = torch.load(state, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0
    return saved["epoch"] * 6 + saved["step"]


def run_until(cmd, state: Path, step: int) -> subprocess.Popen:
    """Start ``cmd``; return once its resume state stands at ``step`` or later."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while state_step(state) < step:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before step {step}: {proc.stderr.read()}")
        assert time.time() < deadline, f"no resume state at step {step} in 180 s"
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def straight(tiny_tables, tiny_captions, tiny_pretrained, tmp_path_factory):
    """An uninterrupted run's checkpoint and log (no workers, no mid-epoch states)."""
    out = tmp_path_factory.mktemp("straight")
    subprocess.run(
        finetune_cmd(tiny_tables, tiny_captions, tiny_pretrained, out, minutes=10),
        check=True,
        capture_output=True,
    )
    return out


def log_without_times(path: Path) -> list[list[str]]:
    return [line.split(",")[:-1] for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9", "SIGTERM", "SIGUSR1"])
def test_an_interrupted_run_resumes_mid_epoch_to_the_same_checkpoint(
    how, straight, tiny_tables, tiny_captions, tiny_pretrained, tmp_path
):
    step = random.randint(1, 6 * EPOCHS - 2)  # any step but the last two
    out = tmp_path / "run"
    state = out / ".best.safetensors.resume" / "state.pt"
    # A resume state after every step, so that kill -9 finds one at the step it hits.
    cmd = finetune_cmd(
        tiny_tables, tiny_captions, tiny_pretrained, out, minutes=0 if how == "kill -9" else 10
    )
    if how == "kill -9":
        proc = run_until(cmd, state, step)
        proc.kill()
        proc.wait()
    else:
        # The state the first epoch's end writes tells that the run is under way; the signal
        # comes during the second or third epoch, and the state it makes is mid-epoch.
        proc = run_until(cmd, state, 6)
        time.sleep(0.2 * random.random())
        t0 = time.time()
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + getattr(signal, how), err
        assert time.time() - t0 < 30, "the state took more than 30 s to write"
        assert f"stopped by {how}" in err.strip().splitlines()[-1], err
        assert "the same command continues the run" in err
    assert not (out / "best.safetensors").exists(), "an interrupted run wrote its checkpoint"
    stopped_at = state_step(state)
    # A kill lands a little after the state it waited for: on a busy machine the run may have
    # finished its last step (the state at step 18) but not yet written its checkpoint.
    assert 0 < stopped_at <= 18, f"{how} at step {step}: state at step {stopped_at}"

    # Resumed with another worker count: each example's augmentation is seeded, so the result
    # does not depend on it, and the resume state stands.
    done = subprocess.run(
        finetune_cmd(tiny_tables, tiny_captions, tiny_pretrained, out, workers=1, minutes=10),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr, done.stderr
    assert (out / "best.safetensors").read_bytes() == (
        straight / "best.safetensors"
    ).read_bytes(), f"{how} at step {stopped_at}"
    assert log_without_times(out / "log.csv") == log_without_times(straight / "log.csv")
    assert not state.parent.exists()  # removed once the checkpoint is written


def test_every_example_is_augmented_the_same_whatever_the_order_or_process():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.rand(3)  # what a random crop draws

    data = SeededItems(Noisy())
    data.seed = 7
    forward = [data[i] for i in range(8)]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    backward = [data[i] for i in reversed(range(8))][::-1]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is left as it was
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    workers = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    assert all(torch.equal(a, b) for a, b in zip(forward, workers, strict=True))
    data.seed = 8  # another epoch draws other crops
    assert not torch.equal(forward[0], data[0])


def test_resumed_batches_skip_what_was_trained_on():
    gen = torch.Generator().manual_seed(0)
    order = torch.utils.data.RandomSampler(range(11), generator=gen)
    batches = RankBatches(order, batch_size=3)
    full = list(batches)
    gen.manual_seed(0)
    batches.skip = 2
    assert list(batches) == full[2:]
    assert len(batches) == len(full) == 4  # the schedule still counts every step


def test_the_run_hash_ignores_what_does_not_change_results():
    cfg = TrainConfig(epochs=1, lr=0.1, wd=0.0, batch_size=4, warmup_steps=0, seed=0)
    other = TrainConfig(**{**cfg.__dict__, "num_workers": 4, "checkpoint_minutes": 1.0})
    assert result_config(cfg) == result_config(other)
    # BatchNorm's synchronisation changes a result only over several ranks, as their number does
    assert result_config(cfg) == result_config(TrainConfig(**{**cfg.__dict__, "sync_bn": False}))
    assert result_config(cfg) != result_config(TrainConfig(**{**cfg.__dict__, "tf32": True}))
    assert result_config(cfg) != result_config(TrainConfig(**{**cfg.__dict__, "seed": 1}))


def test_a_dataloader_worker_ignores_the_stop_signals():
    class Pid(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            os.kill(os.getpid(), signal.SIGTERM)  # would kill a worker with default handlers
            return os.getpid()

    from flyp.loading import make_loader

    [pid] = list(make_loader(Pid(), batch_size=None, workers=1))
    assert pid != os.getpid()


def test_a_process_that_exits_while_its_workers_run_ends():
    """Workers ignore SIGTERM, with which multiprocessing ends them at exit before it waits for
    them: a loader still held at exit (by a traceback, say) hung the process for ever (CI's
    pytest, after its last test)."""
    script = (
        "import sys, torch\n"
        "from flyp.loading import make_loader\n"
        "held = iter(make_loader(list(range(100)), batch_size=None, workers=2))\n"
        "print(next(held))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == "0\n", done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
def test_two_ranks_stop_together_on_sigterm_and_resume_to_the_same_checkpoint(
    tiny_tables, tiny_captions, tiny_pretrained, tmp_path
):
    """torchrun passes SIGTERM on to its ranks: they stop after the same step, rank 0 writes the
    state, and the run resumed over 2 ranks ends as the uninterrupted 2-rank run (gloo, CPU)."""
    launch = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "flyp.cli"]

    def cmd(out):
        return launch + finetune_cmd(tiny_tables, tiny_captions, tiny_pretrained, out)[1:]

    straight = tmp_path / "straight"
    subprocess.run(cmd(straight), check=True, capture_output=True)
    out = tmp_path / "run"
    state = out / ".best.safetensors.resume" / "state.pt"
    proc = run_until(cmd(out), state, 6)  # the first epoch's end
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert err.count("stopped by SIGTERM") == 1, err  # rank 0 says it for the run
    assert not re.search(r"^\[\d\d:\d\d:\d\d\] *(False)?$", err, re.M), err  # the other: nothing
    assert 6 <= state_step(state) < 18
    resumed = subprocess.run(cmd(out), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert (out / "best.safetensors").read_bytes() == (straight / "best.safetensors").read_bytes()
