"""The linear probe's solver (lbfgs along a warm-started path of C, as sklearn's) and its choice
of C by the benchmark's ID metric on ID-val."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import flyp.linear_probe
import flyp.methods.lp
from flyp.features import write_features
from flyp.linear_probe import regularisation_path
from flyp.methods import get_method
from flyp.methods.lp import fit_linear_probe
from flyp.scoring import METRICS


def _blobs(n, n_classes, dim=16, seed=0, spread=1.5):
    """Overlapping Gaussian classes, rows L2-normalised like CLIP features (not separable, so
    every C has a unique, well-conditioned optimum)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim))
    y = rng.integers(0, n_classes, n)
    x = centers[y] + spread * rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


@pytest.mark.parametrize("n_classes", [5, 2])
def test_solver_matches_sklearn_lbfgs_along_the_warm_started_path(n_classes):
    # sklearn is solved to tol 1e-10 in float64; ours stops where float32 stops resolving the
    # objective (max gradient entry about 1e-5 here). A gradient error g moves the optimum by at
    # most g / (smallest Hessian eigenvalue); on this data that leaves probabilities within 1e-3
    # and coefficients within 2% of their scale for C up to 100 (larger C: flatter, coefficients
    # drift along directions that barely change a probability).
    x, y = _blobs(300, n_classes)
    xt = torch.tensor(x, dtype=torch.float32)
    for c, fit in regularisation_path(xt, torch.tensor(y), n_classes, [100.0, 0.01, 1.0], tol=1e-7):
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y)
        probs, ref_probs = torch.softmax(fit.logits(xt), 1).numpy(), ref.predict_proba(x)
        gap = np.abs(probs - ref_probs).max()
        assert gap < 1e-3
        top2 = np.sort(ref_probs, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * gap  # rows whose prediction that gap cannot flip
        assert clear.mean() > 0.9
        assert (probs.argmax(1) == ref.predict(x))[clear].all()
        # softmax logits are defined up to a constant per row: sklearn's and ours sum to zero
        # over classes (L-BFGS from zero keeps that); the binary model has one row, no freedom
        coef, intercept = ref.coef_, ref.intercept_
        scale = np.abs(coef).max()
        np.testing.assert_allclose(fit.coef.numpy(), coef, rtol=0, atol=0.02 * scale)
        np.testing.assert_allclose(fit.intercept.numpy(), intercept, rtol=0, atol=0.02 * scale)


def test_the_path_runs_from_strong_to_weak_regularisation_and_warm_starts():
    x, y = _blobs(200, 3)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    grid = flyp.methods.lp.C_GRID
    path = list(regularisation_path(xt, yt, 3, grid[::-1], tol=1e-6))
    assert [c for c, _ in path] == sorted(grid)
    cold = [flyp.linear_probe.fit_logistic(xt, yt, 3, c, tol=1e-6) for c, _ in path]
    assert sum(fit.n_iter for _, fit in path) < 0.8 * sum(fit.n_iter for fit in cold)
    for (_, warm), fit in zip(path, cold, strict=True):  # the same optima
        torch.testing.assert_close(
            torch.softmax(warm.logits(xt), 1), torch.softmax(fit.logits(xt), 1), rtol=0, atol=1e-3
        )


def test_logits_exist_one_chunk_of_rows_at_a_time_in_float32(monkeypatch):
    # float64 features in; the solver must work in float32 and never hold more than
    # chunk_rows x classes logits (at ImageNet size: 1.27M x 1000 x 8 B = 10 GB otherwise)
    x, y = _blobs(300, 5)
    train = torch.tensor(x), torch.tensor(y)
    seen = []
    real = flyp.linear_probe.chunk_loss_grad

    def spy(x, y, coef, intercept):
        seen.append((x.shape[0], x.dtype, coef.dtype))
        return real(x, y, coef, intercept)

    monkeypatch.setattr(flyp.linear_probe, "chunk_loss_grad", spy)
    head, _, _ = fit_linear_probe(train, train, c_grid=[1.0], chunk_rows=64)
    assert seen and {rows for rows, _, _ in seen} == {64, 300 - 4 * 64}
    assert {(xd, cd) for _, xd, cd in seen} == {(torch.float32, torch.float32)}
    monkeypatch.setattr(flyp.linear_probe, "chunk_loss_grad", real)
    whole, _, _ = fit_linear_probe(train, train, c_grid=[1.0], chunk_rows=10**6)
    xf = train[0].float()
    torch.testing.assert_close(head(xf).softmax(1), whole(xf).softmax(1), rtol=0, atol=1e-4)


def test_classes_never_seen_in_training_never_win_and_two_classes_keep_logits_0_z():
    x, y = _blobs(120, 2, dim=4)
    y = np.where(y == 0, 1, 3)  # train labels {1, 3}; val also has 0 and 2
    xt = torch.tensor(x, dtype=torch.float32)
    yv = torch.tensor(np.r_[y[:-2], 0, 2])
    head, c, _ = fit_linear_probe((xt, torch.tensor(y)), (xt, yv), c_grid=[1.0])
    assert head.out_features == 4
    logits = head(xt).detach()
    assert set(logits.argmax(1).tolist()) <= {1, 3}
    ref = LogisticRegression(C=1.0, tol=1e-10).fit(x, y)
    torch.testing.assert_close(logits[:, 1], torch.zeros(len(x)))
    np.testing.assert_allclose(
        logits[:, 3] - logits[:, 1], ref.decision_function(x), rtol=0, atol=2e-3
    )


def _imbalanced(rng, counts_at_plus, counts_at_minus):
    """2-D points around (+2, 0) and (-2, 0) with the given labels."""
    xs, ys = [], []
    for center, counts in ((2.0, counts_at_plus), (-2.0, counts_at_minus)):
        for label, n in enumerate(counts):
            xs.append(rng.normal(size=(n, 2)) * 0.3 + [center, 0.0])
            ys.append(np.full(n, label))
    return torch.tensor(np.concatenate(xs), dtype=torch.float32), torch.tensor(np.concatenate(ys))


def test_c_is_chosen_by_the_metric_asked_for_not_by_accuracy():
    # Train: class 0 (70) around +2, class 1 (30) around -2. Val: 25 of class 0's 80 images sit
    # with class 1 at -2. C = 1e-4 flattens the probe to the class prior ("always 0"): val
    # accuracy 0.80, macro-F1 0.44. C = 1 separates the blobs: accuracy 0.75, macro-F1 0.72.
    rng = np.random.default_rng(0)
    train = _imbalanced(rng, (70, 0), (0, 30))
    val = _imbalanced(rng, (55, 0), (25, 20))
    grid = [1e-4, 1.0]
    _, c_acc, acc = fit_linear_probe(train, val, c_grid=grid, metric="accuracy")
    head, c_f1, f1 = fit_linear_probe(train, val, c_grid=grid, metric="macro_f1")
    assert (c_acc, c_f1) == (1e-4, 1.0)
    assert (
        acc == pytest.approx(0.80)
        and f1 == pytest.approx(METRICS["macro_f1"](head(val[0]), val[1]))
        and f1 == pytest.approx(0.715, abs=0.01)
    )


def test_lp_scores_c_with_the_benchmarks_id_metric_and_its_val_table(
    ctx, tiny_pretrained, tiny_tables, tmp_path, monkeypatch
):
    path = tmp_path / "features.safetensors"
    write_features(tiny_pretrained, tiny_tables, path)
    tables_seen = []

    def needs_table(logits, labels, table=None):  # a metric that reads a column of the val table
        tables_seen.append(table)
        return float((table["label"].to_numpy() == labels.numpy()).mean())

    monkeypatch.setitem(METRICS, "needs_table", needs_table)
    id_set = dataclasses.replace(ctx.benchmark.id_set, metric="needs_table")
    ctx.benchmark = dataclasses.replace(
        ctx.benchmark,
        eval_sets=[id_set if s is ctx.benchmark.id_set else s for s in ctx.benchmark.eval_sets],
    )
    ctx.options = {"features": str(path)}
    get_method("lp").classifier(ctx)
    assert ctx.notes["lp_val_metric"] == "needs_table" and ctx.notes["lp_val_score"] == 1.0
    assert ctx.notes["lp_C"] in flyp.methods.lp.C_GRID
    assert len(tables_seen) == len(flyp.methods.lp.C_GRID) and "image" not in tables_seen[0]


def test_the_probe_and_zero_shot_do_not_depend_on_the_seed(
    ctx, tiny_pretrained, tiny_tables, tmp_path
):
    """What lets the workflow run them once for every seed (Method.seeded = False)."""
    path = tmp_path / "features.safetensors"
    write_features(tiny_pretrained, tiny_tables, path)
    for name in ("lp", "zeroshot"):
        method = get_method(name)
        assert not method.seeded
        states = []
        for seed in (0, 1):
            torch.manual_seed(seed)  # as finetuning seeds a run
            one = dataclasses.replace(
                ctx, seed=seed, options={"features": str(path)} if name == "lp" else {}
            )
            states.append(method.classifier(one).state_dict())
        assert states[0].keys() == states[1].keys()
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert all(get_method(m).seeded for m in ("ft", "flyp", "lpft", "l2sp"))


def test_the_c_grid_options_give_the_default_grid_and_the_references():
    from flyp.methods.lp import log_grid

    assert log_grid(-2, 5, 8) == flyp.methods.lp.C_GRID  # the default, exactly
    reference = np.logspace(-1, 2, 100)  # linear_lbfgs.py's Cs
    assert np.allclose(log_grid(-1, 2, 100), reference, rtol=1e-12, atol=0)
    assert log_grid(0.5, 3, 1) == [10.0**0.5]


def test_raw_train_augmented_features_give_a_probe_on_raw_features_and_lpft_follows(
    ctx, tiny_pretrained, tiny_tables, tmp_path
):
    """features: {normalize: false, train_transform: true} (the FLYP reference's probe): the file
    says so, the probe's head reads raw encode_image output, its checkpoint records it, and LP-FT
    from it keeps reading raw features."""
    from flyp.features import features_options, read_features
    from flyp.models import classifier_from_checkpoint, load_checkpoint, save_checkpoint

    default, raw = tmp_path / "default.safetensors", tmp_path / "raw.safetensors"
    write_features(tiny_pretrained, tiny_tables, default)
    write_features(tiny_pretrained, tiny_tables, raw, normalize=False, train_transform=True)
    assert features_options(default) == {"normalize": True, "train_transform": False}
    assert features_options(raw) == {"normalize": False, "train_transform": True}
    d, r = read_features(default), read_features(raw)
    assert torch.allclose(
        d["val"][0], torch.nn.functional.normalize(r["val"][0], dim=-1), atol=1e-5
    )
    assert not torch.allclose(r["val"][0].norm(dim=-1), torch.ones(len(r["val"][1])))
    assert not torch.allclose(  # the train split went through the random crop
        d["train"][0], torch.nn.functional.normalize(r["train"][0], dim=-1), atol=1e-3
    )
    again = tmp_path / "again.safetensors"  # the crops are seeded: the same file again
    write_features(tiny_pretrained, tiny_tables, again, normalize=False, train_transform=True)
    assert torch.equal(read_features(again)["train"][0], r["train"][0])

    ctx.options = {"features": str(raw), "c_count": 3, "log10_c_min": -1, "log10_c_max": 1}
    probe = get_method("lp").classifier(ctx)
    assert probe.normalize is False and ctx.notes["normalize_features"] is False
    assert ctx.notes["lp_C"] in (0.1, 1.0, 10.0)
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(probe(images), probe.head(probe.clip.encode_image(images)))
    path = tmp_path / "lp.safetensors"
    save_checkpoint(path, ctx.model_name, probe.clip, probe.head, dict(ctx.notes))
    assert classifier_from_checkpoint(load_checkpoint(path)).normalize is False
    lpft = dataclasses.replace(ctx, options={"init_head": str(path)}, notes={})
    task = get_method("lpft").task(lpft)
    assert task.module.normalize is False and lpft.notes["normalize_features"] is False


def test_weight_ensembling_mixes_a_raw_feature_head_with_the_zero_shot_one(tiny_pretrained):
    """alpha 0 is the zero-shot model and 1 the finetuned one, whatever features each head reads;
    two heads on the same features mix as WiSE-FT's interpolated head."""
    from flyp.ensemble import interpolated_classifier
    from flyp.models import Checkpoint, load_checkpoint

    pre = load_checkpoint(tiny_pretrained)
    torch.manual_seed(0)
    dim = 128  # flyp-tiny-rn10t's embedding width
    zs_head = {"weight": torch.randn(3, dim), "bias": torch.zeros(3)}
    ft_head = {"weight": torch.randn(3, dim), "bias": torch.randn(3)}
    zs = Checkpoint(pre.model_name, pre.clip, zs_head)
    raw = Checkpoint(pre.model_name, pre.clip, ft_head, {"normalize_features": False})
    unit = Checkpoint(pre.model_name, pre.clip, ft_head)
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        emb = interpolated_classifier(zs, zs, 0.0, [], []).clip.encode_image(images)
        on_unit = zs_head["weight"] @ torch.nn.functional.normalize(emb, dim=-1).T
        on_raw = (ft_head["weight"] @ emb.T).T + ft_head["bias"]
        out = {a: interpolated_classifier(zs, raw, a, [], [])(images) for a in (0.0, 0.5, 1.0)}
        assert torch.allclose(out[0.0], on_unit.T, atol=1e-5)
        assert torch.allclose(out[1.0], on_raw, atol=1e-4)
        assert torch.allclose(out[0.5], 0.5 * on_unit.T + 0.5 * on_raw, atol=1e-4)
        same = interpolated_classifier(zs, unit, 0.5, [], [])
        assert same.normalize and isinstance(same.head, torch.nn.Linear)
