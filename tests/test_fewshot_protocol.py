"""The few-shot protocol's sample and augmentation, as the FLYP reference's few-shot code has them
(src/models/flyp_loss_few_shot.py): each draw has its own k-per-class val sample (the reference
takes the first k of each class from a shuffled val loader, afresh for each of its draws); with
``augmentation="once"`` every epoch trains on what the first drew (the reference transforms its
k-per-class batch once, random crop and caption, and steps on that batch every epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flyp.datasets import get_benchmark
from flyp.methods import Context
from flyp.task import Task
from flyp.training import TrainConfig, fit


class Augmented(torch.utils.data.Dataset):
    """Eight examples, each drawn with a random 'crop' (noise from torch's generator, which
    flyp.training.SeededItems seeds per example and epoch)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.full((3,), float(i)) + torch.rand(3), torch.tensor(i % 2)


class Recording(Task):
    """A toy regression that records, per step, the batch it trained on and a 'caption' drawn
    from torch's generator in the loss (as flyp.methods.flyp.FlypTask draws its templates)."""

    def __init__(self):
        torch.manual_seed(0)
        self.module = nn.Linear(3, 1)
        self.train_data = Augmented()
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def loss(self, batch):
        x, y = batch
        caption = torch.randint(80, (len(y),))
        self.seen.append((x.clone(), y.clone(), caption))
        return ((self.module(x).squeeze(1) - y.float()) ** 2).mean()

    def save(self, path, info):
        torch.save({"w": self.module.weight.detach().clone()}, path)


def _epochs(tmp_path, augmentation: str, batch_size: int) -> list[list]:
    """What each of 3 epochs trained on: per step, (inputs, labels, captions)."""
    task = Recording()
    cfg = TrainConfig(epochs=3, lr=0.01, wd=0.0, batch_size=batch_size, warmup_steps=0, seed=3)
    fit(
        task,
        cfg,
        out=tmp_path / "best.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        select="last",
        augmentation=augmentation,
        progress=lambda m: None,
    )
    steps = len(task.seen) // 3
    return [task.seen[e * steps : (e + 1) * steps] for e in range(3)]


def _same(a: list, b: list) -> bool:
    """Whether two epochs trained on the same steps (inputs, labels, captions)."""
    pairs = zip(a, b, strict=True)
    return all(torch.equal(u, v) for x, y in pairs for u, v in zip(x, y, strict=True))


@pytest.mark.parametrize("batch_size", [8, 4])  # the whole k-shot set in one batch, or two
def test_augmentation_once_trains_every_epoch_on_what_the_first_drew(tmp_path, batch_size):
    once = _epochs(tmp_path / "once", "once", batch_size)
    assert _same(once[0], once[1]) and _same(once[0], once[2])  # crops, order and captions
    every = _epochs(tmp_path / "every", "per_epoch", batch_size)
    assert not _same(every[0], every[1]) and not _same(every[1], every[2])
    # the first epoch is the same either way: only the later ones draw afresh
    assert not _same(once[1], every[1])


def _context(draw: int) -> Context:
    return Context(
        benchmark=get_benchmark("embedded"),
        pretrained=None,
        data_dir=None,
        captions_dir=None,
        device=None,
        tokenizer=None,
        train_transform=None,
        eval_transform=None,
        seed=0,
        shots=4,
        draw=draw,
    )


def test_each_draw_has_its_own_val_sample_that_every_method_shares():
    """As in the reference: a draw's k-per-class val sample is drawn for that draw (the same for
    every method and seed of it), not one sample that all draws share."""
    bench = get_benchmark("embedded")
    labels = np.repeat(np.arange(len(bench.classnames)), 20)
    first, again, other = (_context(d).subset(labels, "val") for d in (0, 0, 1))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    for rows in (first, other):
        assert np.bincount(labels[rows]).tolist() == [4] * len(bench.classnames)
    # ... and it is not the draw's training sample
    assert not np.array_equal(_context(0).subset(labels, "train"), first)
