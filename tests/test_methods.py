"""What distinguishes each method, on tiny inputs."""

import math

import pytest
import torch

from flyp.io import UserError
from flyp.methods import get_method, method_names


def test_registry_has_the_methods_and_rejects_unknown_names():
    assert {"zeroshot", "ft", "flyp"} <= set(method_names())
    with pytest.raises(UserError, match="unknown method 'sgd'"):
        get_method("sgd")


def _step(task, batch, lr=1e-2):
    opt = torch.optim.SGD([p for p in task.module.parameters() if p.requires_grad], lr=lr)
    task.module.train()
    loss = task.loss(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _batch(task, n=8):
    items = [task.train_data[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def test_ft_trains_image_tower_and_head_but_never_the_text_tower(ctx):
    task = get_method("ft").task(ctx)
    clip = task.module.clip
    before = {k: v.clone() for k, v in task.module.state_dict().items()}
    _step(task, _batch(task))
    after = task.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("clip.visual.") for k in changed)
    assert "head.weight" in changed
    assert not any(k.startswith("clip.") and not k.startswith("clip.visual.") for k in changed)
    assert not clip.logit_scale.requires_grad


def test_ft_head_starts_as_the_zero_shot_head(ctx):
    task = get_method("ft").task(ctx)
    zs = get_method("zeroshot").classifier(ctx)
    torch.testing.assert_close(task.module.head.weight, zs.head.weight)


def test_flyp_trains_both_towers_and_temperature_with_contrastive_loss(ctx):
    task = get_method("flyp").task(ctx)
    before = {k: v.clone() for k, v in task.module.state_dict().items()}
    _step(task, _batch(task))
    after = task.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("visual.") for k in changed)
    assert any(k.startswith("transformer.") for k in changed)
    assert "logit_scale" in changed


def test_flyp_captions_name_each_image_class(ctx):
    task = get_method("flyp").task(ctx)
    images, labels = _batch(task, 16)
    _, tokens = task.captions((images, labels))
    tok = ctx.tokenizer
    for label, row in zip(labels.tolist(), tokens, strict=True):
        # the sampled caption is one of the class's templated captions
        options = tok([t.format(ctx.benchmark.classnames[label]) for t in ctx.benchmark.templates])
        assert any(torch.equal(row, o) for o in options)


def test_flyp_samples_different_templates_across_steps(ctx):
    task = get_method("flyp").task(ctx)
    images, labels = _batch(task, 16)
    first = task.captions((images, labels))[1]
    second = task.captions((images, labels))[1]
    assert not torch.equal(first, second)


@pytest.mark.parametrize("clamp", [True, False])
def test_flyp_clamps_logit_scale_at_100_only_when_asked(ctx, tmp_path, clamp):
    from flyp.training import TrainConfig, fit

    task = get_method("flyp").task(ctx)
    with torch.no_grad():
        task.module.logit_scale.fill_(math.log(200))  # above open_clip's ceiling of 100
    cfg = TrainConfig(
        epochs=1,
        lr=1e-9,
        wd=0.0,
        batch_size=len(task.train_data),
        warmup_steps=0,
        seed=0,
        clamp_logit_scale=clamp,
    )
    fit(
        task,
        cfg,
        out=tmp_path / "m.safetensors",
        log_csv=tmp_path / "log.csv",
        device=ctx.device,
        info={},
        progress=lambda m: None,
    )
    expected = 100.0 if clamp else 200.0  # the FLYP reference never clamps
    assert task.module.logit_scale.exp().item() == pytest.approx(expected, rel=1e-3)
