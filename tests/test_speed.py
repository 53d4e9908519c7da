"""Speed without changing numbers: uint8 images normalised on the device, every loader honouring the
workers setting, the weight-ensembling grid evaluated in one pass, and a training loop that does
not read its loss on the host every step."""

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torch import nn

import flyp.ensemble
import flyp.loading
import flyp.scoring
from flyp.datasets import get_benchmark, table_path
from flyp.datasets.tables import ImageTable
from flyp.ensemble import ensemble_curve, interpolated_classifier, run_ensemble
from flyp.evaluation import evaluate_classifier
from flyp.loading import make_loader, resolve_workers
from flyp.models import (
    Checkpoint,
    create_clip,
    load_checkpoint,
    normalise_images,
    preprocess_transforms,
)
from flyp.scoring import predict, validation_scores
from flyp.task import Task
from flyp.training import TrainConfig, fit

CLIP_CFG = {
    "size": 224,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


def _photo(seed=0, size=(400, 350)):
    """A JPEG-decoded image of ImageNet's typical size (smooth, like a photo, not noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


@pytest.mark.parametrize(
    "cfg",
    [
        CLIP_CFG,
        {**CLIP_CFG, "size": 32},
        {
            **CLIP_CFG,
            "resize_mode": "squash",
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "interpolation": "bilinear",
        },
    ],
)
def test_uint8_images_normalised_on_the_device_equal_open_clips_float_transforms(cfg):
    old = PreprocessCfg(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    mean = torch.tensor(cfg["mean"]).view(-1, 1, 1)
    std = torch.tensor(cfg["std"]).view(-1, 1, 1)
    train, evaluation = preprocess_transforms(cfg)
    for i in range(3):
        image = _photo(i)
        new = evaluation(image)
        assert new.dtype == torch.uint8  # a quarter of float32's bytes cross the process boundary
        expected = image_transform_v2(old, is_train=False)(image)
        torch.testing.assert_close(
            normalise_images(new[None], mean, std)[0], expected, rtol=0, atol=1e-6
        )
        torch.manual_seed(i)  # the same random crop (scale 0.9-1.0, bicubic) from the same seed
        new = train(image)
        torch.manual_seed(i)
        expected = image_transform_v2(old, is_train=True)(image)
        torch.testing.assert_close(
            normalise_images(new[None], mean, std)[0], expected, rtol=0, atol=1e-6
        )


def test_a_clip_takes_uint8_images_and_normalises_them_with_its_own_preprocessing():
    torch.manual_seed(0)
    clip = create_clip("flyp-tiny-rn10t").eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = clip.visual.input_mean, clip.visual.input_std
    with torch.no_grad():
        torch.testing.assert_close(
            clip.encode_image(images), clip.encode_image(normalise_images(images, mean, std))
        )
    assert not any("input_mean" in k for k in clip.state_dict())  # checkpoints unchanged


# -- workers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "threads", "expected"), [("auto", 1, 0), ("auto", 8, 7), (3, 1, 3), (0, 8, 0)]
)
def test_auto_workers_leave_the_main_process_one_core(workers, threads, expected):
    assert resolve_workers(workers, threads) == expected


def test_cli_takes_auto_or_a_count_of_workers():
    from flyp.cli import main

    done = CliRunner().invoke(
        main, ["features", "--checkpoint", "x", "--data", "d", "--out", "o", "--workers", "many"]
    )
    assert done.exit_code == 2 and "expected a number >= 0 or auto" in done.output


def test_batches_for_a_gpu_are_pinned():
    data = torch.utils.data.TensorDataset(torch.zeros(4, 3, dtype=torch.uint8))
    assert make_loader(data, batch_size=2, device=torch.device("cuda")).pin_memory
    assert not make_loader(data, batch_size=2, device=torch.device("cpu")).pin_memory


@pytest.fixture()
def loaders(dataloaders, monkeypatch):
    """The worker count of every DataLoader made, by the kind of its dataset (conftest's
    ``dataloaders``); ID-val too large to hold in memory (so it is read through a loader each
    time, as at ImageNet size)."""
    monkeypatch.setattr(flyp.scoring, "CACHE_BYTES", 0)
    return dataloaders


def test_training_validation_features_evaluation_and_ensembling_use_the_workers(
    tmp_path, loaders, tiny_tables, tiny_captions, tiny_pretrained
):
    from flyp.evaluation import evaluate_checkpoint
    from flyp.features import write_features
    from flyp.finetuning import finetune

    ft = tmp_path / "ft.safetensors"
    cfg = TrainConfig(
        epochs=1, lr=1e-5, wd=0.0, batch_size=48, warmup_steps=0, seed=0, num_workers=1
    )
    finetune(
        "embedded",
        tiny_tables,
        tiny_captions,
        tiny_pretrained,
        "ft",
        cfg,
        options={},
        out=ft,
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        log=lambda m: None,
    )
    write_features(tiny_pretrained, tiny_tables, tmp_path / "f.safetensors", num_workers=1)
    metrics = tmp_path / "m.json"
    evaluate_checkpoint(
        "embedded",
        tiny_tables,
        ft,
        metrics_out=metrics,
        provenance_out=tmp_path / "p.json",
        num_workers=1,
        log=lambda m: None,
    )
    zs = tmp_path / "zs.safetensors"
    finetune(
        "embedded",
        tiny_tables,
        tiny_captions,
        tiny_pretrained,
        "zeroshot",
        cfg,
        options={},
        out=zs,
        log_csv=tmp_path / "log0.csv",
        device=torch.device("cpu"),
        log=lambda m: None,
    )
    run_ensemble(
        "embedded",
        tiny_tables,
        zs,
        ft,
        [0.0, 0.5, 1.0],
        finetuned_metrics=metrics,
        curve_out=tmp_path / "c.csv",
        metrics_out=tmp_path / "w.json",
        num_workers=1,
        log=lambda m: None,
    )
    # train (1), ID-val after the epoch and of zero-shot (2), features (2), evaluation of the
    # finetuned model (6 sets) and of the grid (ID-val + 6 sets)
    assert len(loaders) == 1 + 2 + 2 + 6 + 7
    assert all(workers == 1 for _, workers in loaders), loaders


# -- weight ensembling in one pass ----------------------------------------------------------------


def _perturbed(ckpt: Checkpoint, seed: int) -> Checkpoint:
    """Another model of the same architecture: the weights moved by a random step."""
    g = torch.Generator().manual_seed(seed)
    step = {
        k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
        for k, v in ckpt.clip.items()
    }
    return Checkpoint(ckpt.model_name, step, None, dict(ckpt.info))


@pytest.fixture()
def two_ends(tiny_pretrained):
    """(zero-shot, finetuned) checkpoints with heads: the finetuned one's head is its own."""
    zs = load_checkpoint(tiny_pretrained)
    ft = _perturbed(zs, 1)
    torch.manual_seed(0)
    zs.head = {"weight": torch.randn(12, 128), "bias": torch.zeros(12)}
    ft.head = {"weight": torch.randn(12, 128), "bias": torch.randn(12)}
    return zs, ft


def _per_alpha(zs, ft, alphas, bench, data_dir, val):
    """The curve as before: each alpha's model built and evaluated on its own."""
    rows = []
    for a in alphas:
        classifier = interpolated_classifier(zs, ft, a, bench.classnames, bench.templates)
        logits, labels = predict(classifier, val)
        rows.append(
            {
                "alpha": a,
                **validation_scores(logits, labels, bench.id_set, val.df),
                **evaluate_classifier(classifier, bench, data_dir, log=lambda m: None),
            }
        )
    return rows


@pytest.mark.parametrize("budget", [1 << 40, 1])  # every alpha in one pass; one alpha a pass
def test_one_pass_gives_every_alpha_the_numbers_it_gets_alone(two_ends, tiny_tables, budget):
    zs, ft = two_ends
    bench = get_benchmark("embedded")
    val = ImageTable(
        table_path(tiny_tables, "val"), preprocess_transforms(CLIP_CFG | {"size": 32})[1]
    )
    alphas = [0.0, 0.3, 0.7, 1.0]
    rows = ensemble_curve(
        zs, ft, alphas, bench, tiny_tables, val_set=val, budget=budget, log=lambda m: None
    )
    assert rows == _per_alpha(zs, ft, alphas, bench, tiny_tables, val)


def test_each_image_is_decoded_once_for_the_whole_grid(monkeypatch, two_ends, tiny_tables):
    monkeypatch.setattr(flyp.scoring, "CACHE_BYTES", 0)  # as at ImageNet size: nothing cached
    reads = []
    real = ImageTable.__getitem__
    monkeypatch.setattr(
        ImageTable, "__getitem__", lambda self, i: (reads.append(self.path.stem), real(self, i))[1]
    )
    zs, ft = two_ends
    bench = get_benchmark("embedded")
    val = ImageTable(
        table_path(tiny_tables, "val"), preprocess_transforms(CLIP_CFG | {"size": 32})[1]
    )
    ensemble_curve(
        zs, ft, [i / 10 for i in range(11)], bench, tiny_tables, val_set=val, log=lambda m: None
    )
    for name in ["val", *(s.name for s in bench.eval_sets)]:
        assert reads.count(name) == len(ImageTable(table_path(tiny_tables, name))), name


def test_alpha_zero_and_one_are_read_from_the_two_ends_metrics(
    monkeypatch, tmp_path, two_ends, tiny_tables
):
    from flyp.io import write_json
    from flyp.models import save_checkpoint

    zs, ft = two_ends
    paths = {}
    for name, ckpt, value in (("zs", zs, 0.25), ("ft", ft, 0.75)):
        info = {
            **ckpt.info,
            "val_metric": "accuracy",
            "best_val_score": value,
            "best_val_loss": 1.0,
        }
        save_checkpoint(
            tmp_path / f"{name}.safetensors", ckpt.model_name, ckpt.clip, ckpt.head, info
        )
        write_json(
            tmp_path / f"{name}.json",
            dict.fromkeys(["test", "v2", "sketch", "r", "a", "objectnet", "avg_ood"], value),
        )
        paths[name] = tmp_path / f"{name}.safetensors"
    built = []
    real = flyp.ensemble.interpolated_classifier
    monkeypatch.setattr(
        flyp.ensemble,
        "interpolated_classifier",
        lambda zs, ft, a, *args: (built.append(a), real(zs, ft, a, *args))[1],
    )
    run_ensemble(
        "embedded",
        tiny_tables,
        paths["zs"],
        paths["ft"],
        [0.0, 0.5, 1.0],
        finetuned_metrics=tmp_path / "ft.json",
        zeroshot_metrics=tmp_path / "zs.json",
        curve_out=tmp_path / "c.csv",
        metrics_out=tmp_path / "w.json",
        log=lambda m: None,
    )
    assert built == [0.5]  # the ends are known: only the middle is evaluated
    curve = (tmp_path / "c.csv").read_text().splitlines()
    assert curve[1].startswith("0.000000,accuracy,0.250000,1.000000,0.250000")
    assert curve[3].startswith("1.000000,accuracy,0.750000,1.000000,0.750000")


# -- the training loop --------------------------------------------------------------------------


class Regression(Task):
    def __init__(self, n=80):
        torch.manual_seed(0)
        self.module = nn.Linear(3, 1)
        x = torch.randn(n, 3)
        self.train_data = torch.utils.data.TensorDataset(x, x.sum(1))

    def loss(self, batch):
        x, y = batch
        return ((self.module(x).squeeze(1) - y) ** 2).mean()

    def validate(self):
        return {"val_metric": "accuracy", "val_score": 0.5, "val_loss": 1.0}

    def save(self, path, info):
        torch.save({"w": self.module.weight.detach().clone()}, path)


def test_training_reads_its_loss_on_the_host_once_per_interval_not_every_step(
    monkeypatch, tmp_path
):
    reads = []
    for name in ("item", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, _r=real, _n=name: (reads.append(_n), _r(self))[1]
        )
    cfg = TrainConfig(epochs=2, lr=0.01, wd=0.0, batch_size=2, warmup_steps=0, seed=0)
    result = fit(
        Regression(),
        cfg,
        out=tmp_path / "b.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=lambda m: None,
    )
    assert len(reads) <= 2 * 4  # 40 steps an epoch: one read at the end of each (and the sum)
    losses = [float(row["train_loss"]) for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[1] < losses[0]


def test_training_loss_column_is_the_mean_of_the_step_losses(tmp_path):
    seen = []

    class Recording(Regression):
        def loss(self, batch):
            loss = super().loss(batch)
            seen.append(float(loss.detach()))
            return loss

    cfg = TrainConfig(epochs=1, lr=0.01, wd=0.0, batch_size=4, warmup_steps=0, seed=0)
    result = fit(
        Recording(),
        cfg,
        out=tmp_path / "b.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=lambda m: None,
    )
    assert result.history[0]["train_loss"] == f"{sum(seen) / len(seen):.5f}"


class ViTCrossEntropy(Task):
    """A small ViT CLIP with a head, trained with cross-entropy on random uint8 images."""

    def __init__(self):
        from flyp.models import ImageClassifier

        torch.manual_seed(0)
        clip = create_clip("flyp-fixture-vit")
        self.module = ImageClassifier(clip, nn.Linear(32, 4))
        images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
        self.train_data = torch.utils.data.TensorDataset(images, torch.arange(24) % 4)

    def loss(self, batch):
        images, labels = batch
        return nn.functional.cross_entropy(self.module(images), labels)

    def validate(self):
        return {"val_metric": "accuracy", "val_score": 0.5, "val_loss": 1.0}

    def save(self, path, info):
        torch.save({k: v.clone() for k, v in self.module.state_dict().items()}, path)


def _train(tmp_path, task, **switches):
    out = tmp_path / f"{'-'.join(switches) or 'plain'}.pt"
    cfg = TrainConfig(epochs=2, lr=1e-3, wd=0.1, batch_size=8, warmup_steps=0, seed=0, **switches)
    fit(
        task,
        cfg,
        out=out,
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=lambda m: None,
    )
    return torch.load(out, weights_only=True)


def test_gradient_checkpointing_and_compile_train_the_same_weights(monkeypatch, tmp_path):
    compiled = []
    real = nn.Module.compile

    def eager_compile(module, **kwargs):  # traced by dynamo, run eagerly: seconds, not a minute
        compiled.append(type(module).__name__)
        return real(module, backend="eager")

    monkeypatch.setattr(nn.Module, "compile", eager_compile)
    plain = _train(tmp_path, ViTCrossEntropy())
    for switch in ("grad_checkpointing", "compile"):
        other = _train(tmp_path, ViTCrossEntropy(), **{switch: True})
        for k in plain:
            torch.testing.assert_close(other[k], plain[k], rtol=1e-5, atol=1e-6)
    assert compiled == ["VisionTransformer", "Transformer"]  # image tower, text transformer


def test_gradient_checkpointing_refuses_a_model_with_batchnorm(tmp_path):
    from flyp.io import UserError
    from flyp.models import ImageClassifier

    task = ViTCrossEntropy()
    task.module = ImageClassifier(create_clip("flyp-tiny-rn10t"), nn.Linear(128, 4))
    with pytest.raises(UserError, match="BatchNorm"):
        _train(tmp_path, task, grad_checkpointing=True)


def test_evaluation_precision_is_a_switch_that_leaves_fp32_alone():
    from flyp.models import ImageClassifier
    from flyp.scoring import eval_precision

    torch.manual_seed(0)
    classifier = ImageClassifier(create_clip("flyp-fixture-vit"), nn.Linear(32, 5)).eval()
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    data = torch.utils.data.TensorDataset(images, torch.zeros(16, dtype=torch.long))
    fp32, _ = predict(classifier, data)
    with torch.no_grad():
        assert torch.equal(fp32, classifier(images))  # the default is plain fp32
    bf16, _ = predict(classifier, data, precision="bf16")
    assert not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
    before = torch.backends.cuda.matmul.allow_tf32
    with eval_precision("tf32", torch.device("cpu")):
        assert torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before
