"""The baselines and ablations (L2-SP, the three ablations, WiSE-FT, LP, LP-FT, few-shot draws),
each on its distinguishing behaviour (tiny inputs, no full training)."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from flyp.ensemble import interpolate_state, interpolated_classifier
from flyp.features import read_features, write_features
from flyp.io import UserError
from flyp.methods import get_method
from flyp.methods.ablations import contrastive_loss_without_collisions
from flyp.methods.lp import fit_linear_probe
from flyp.models import (
    ImageClassifier,
    load_checkpoint,
    save_checkpoint,
)


def _train_steps(task, steps=2, lr=1e-2):
    params = [p for p in task.module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    loader = torch.utils.data.DataLoader(task.train_data, batch_size=16, shuffle=False)
    task.module.train()
    for _, batch in zip(range(steps), loader, strict=False):
        loss = task.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_l2sp_with_huge_lambda_stays_at_the_pretrained_weights(ctx):
    lam = 1e6
    ctx.options = {"lambda": lam}
    task = get_method("l2sp").task(ctx)
    theta0 = {k: v.detach().clone() for k, v in task.module.clip.visual.named_parameters()}
    with torch.no_grad():  # start away from theta_0: the penalty must pull the weights back
        for p in task.module.clip.visual.parameters():
            p.add_(0.5)
    # SGD with lr = 1 / (2 lambda): the penalty's own step lands exactly on theta_0, so what is
    # left is the cross-entropy step, scaled by that tiny lr.
    opt = torch.optim.SGD(
        [p for p in task.module.parameters() if p.requires_grad], lr=1 / (2 * lam)
    )
    loader = torch.utils.data.DataLoader(task.train_data, batch_size=16)
    for _, batch in zip(range(3), loader, strict=False):
        loss = task.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    drift = max(
        (v - theta0[k]).abs().max().item() for k, v in task.module.clip.visual.named_parameters()
    )
    assert drift < 1e-4


def test_l2sp_penalty_is_zero_at_start_and_grows_with_distance(ctx):
    ctx.options = {"lambda": 1.0}
    task = get_method("l2sp").task(ctx)
    batch = next(iter(torch.utils.data.DataLoader(task.train_data, batch_size=8)))
    ce = get_method("ft").task(ctx)
    torch.testing.assert_close(task.loss(batch), ce.loss(batch))
    with torch.no_grad():
        p, _ = task.anchors[0]
        p.add_(0.5)
    assert task.loss(batch) > ce.loss(batch) + 0.2 * p.numel()


def test_collision_masked_loss_equals_plain_loss_when_labels_differ():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(6, 8), dim=-1)
    txt = F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    plain = open_clip.ClipLoss()(img, txt, scale)
    distinct = contrastive_loss_without_collisions(img, txt, scale, torch.arange(6))
    torch.testing.assert_close(distinct, plain)
    collided = contrastive_loss_without_collisions(
        img, txt, scale, torch.tensor([0, 0, 1, 1, 2, 2])
    )
    assert collided < plain  # fewer negatives in each denominator


def test_image_only_ablation_changes_only_the_image_encoder(ctx):
    task = get_method("flyp_image_only").task(ctx)
    before = {k: v.clone() for k, v in task.module.state_dict().items()}
    _train_steps(task)
    changed = _changed(before, task.module.state_dict())
    assert changed and all(k.startswith("visual.") for k in changed)


def test_ce_both_towers_trains_both_encoders_with_class_prompts(ctx):
    task = get_method("ce_both_towers").task(ctx)
    before = {k: v.clone() for k, v in task.module.state_dict().items()}
    _train_steps(task)
    changed = _changed(before, task.module.state_dict())
    assert any(k.startswith("visual.") for k in changed)
    assert any(k.startswith("transformer.") for k in changed)


def _ft_checkpoint(ctx, tmp_path, method="ft"):
    task = get_method(method).task(ctx)
    _train_steps(task)
    path = tmp_path / f"{method}.safetensors"
    task.save(path, {"method": method, "head_from_text": get_method(method).head_from_text})
    return load_checkpoint(path)


def _zs_checkpoint(ctx, tmp_path):
    zs = get_method("zeroshot").classifier(ctx)
    path = tmp_path / "zs.safetensors"
    save_checkpoint(path, ctx.model_name, zs.clip, zs.head, {"head_from_text": True})
    return load_checkpoint(path), zs


@pytest.mark.parametrize("method", ["ft", "flyp"])
def test_wise_ft_endpoints_are_zero_shot_and_finetuned_models(ctx, tmp_path, method):
    zs_ckpt, zs_model = _zs_checkpoint(ctx, tmp_path)
    ft_ckpt = _ft_checkpoint(ctx, tmp_path, method)
    bench = ctx.benchmark
    x = torch.stack([ctx.val_set()[i][0] for i in range(8)])
    with torch.no_grad():
        at0 = interpolated_classifier(zs_ckpt, ft_ckpt, 0.0, bench.classnames, bench.templates)
        assert torch.equal(at0(x), zs_model.eval()(x))
        from flyp.models import classifier_from_checkpoint

        finetuned = classifier_from_checkpoint(ft_ckpt).eval()
        at1 = interpolated_classifier(zs_ckpt, ft_ckpt, 1.0, bench.classnames, bench.templates)
        assert torch.equal(at1(x), finetuned(x))
        mid = interpolated_classifier(zs_ckpt, ft_ckpt, 0.5, bench.classnames, bench.templates)
        assert not torch.equal(mid(x), at0(x)) and not torch.equal(mid(x), at1(x))


def test_interpolation_is_linear_in_every_float_weight():
    zs = {"w": torch.zeros(3), "n": torch.tensor(5)}
    ft = {"w": torch.ones(3) * 4, "n": torch.tensor(9)}
    mixed = interpolate_state(zs, ft, 0.25)
    torch.testing.assert_close(mixed["w"], torch.ones(3))
    assert mixed["n"].item() == 9  # integer buffers are not mixed


def test_linear_probe_picks_c_on_val_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5))

    def sample(n):
        y = rng.integers(0, 3, n)
        return torch.tensor(
            centers[y] + 0.8 * rng.normal(size=(n, 5)), dtype=torch.float32
        ), torch.tensor(y)

    train, val = sample(90), sample(60)
    head, c, acc = fit_linear_probe(train, val, c_grid=[1e-3, 1.0])
    assert c == 1.0  # C = 1e-3 underfits: the val set must say so
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(train[0].numpy(), train[1].numpy())
    ours = head(val[0]).argmax(1).numpy()
    assert (ours == ref.predict(val[0].numpy())).all()
    assert acc == pytest.approx((ours == val[1].numpy()).mean())


def test_features_are_cached_and_lp_reads_them(ctx, tiny_pretrained, tiny_tables, tmp_path):
    path = tmp_path / "features.safetensors"
    write_features(tiny_pretrained, tiny_tables, path)
    feats = read_features(path)
    assert feats["train"][0].shape[0] == len(ctx.train_table())
    torch.testing.assert_close(
        feats["train"][0].norm(dim=1), torch.ones(len(feats["train"][0])), rtol=0, atol=1e-5
    )
    ctx.options = {"features": str(path)}
    classifier = get_method("lp").classifier(ctx)
    assert isinstance(classifier, ImageClassifier)
    assert "lp_C" in ctx.notes


def test_lpft_starts_from_the_probe_head(ctx, tmp_path):
    lp_head = torch.nn.Linear(128, 12)
    path = tmp_path / "lp.safetensors"
    save_checkpoint(path, ctx.model_name, ctx.fresh_clip(), lp_head, {})
    ctx.options = {"init_head": str(path)}
    task = get_method("lpft").task(ctx)
    torch.testing.assert_close(task.module.head.weight, lp_head.weight)


def test_few_shot_sample_is_k_per_class_and_fixed_by_the_draw(ctx):
    labels = ctx.train_table().labels.numpy()
    ctx.shots, ctx.draw = 2, 0
    first = ctx.subset(labels)
    assert np.bincount(labels[first]).max() == 2 and set(labels[first]) == set(labels)
    assert np.array_equal(first, ctx.subset(labels))
    ctx.draw = 1
    assert not np.array_equal(first, ctx.subset(labels))
    ctx.draw = 0
    assert len(ctx.train_table()) == 2 * len(set(labels))
    ctx.shots = 1000
    with pytest.raises(
        UserError,
        match=r"^presets\.embedded\.fewshot\.shots: k=1000, but "
        r"class \d+ \('.+'\) has only \d+ train images in embedded",
    ) as err:
        ctx.subset(labels)
    assert "\n" not in str(err.value)
