"""Model selection: the epoch and the weight-ensembling alpha are picked with the benchmark's own ID
metric (macro-F1 for iWildCam, not accuracy); few-shot runs pick, among epochs 0..E, the lowest
ID-val cross-entropy (the FLYP reference's protocol)."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import flyp.ensemble
import flyp.evaluation
from flyp.datasets import EvalSet, get_benchmark
from flyp.ensemble import ensemble_curve, pick_alpha
from flyp.finetuning import finetune, selection
from flyp.io import UserError
from flyp.methods import Context
from flyp.scoring import accuracy, macro_f1
from flyp.task import Task
from flyp.training import TrainConfig, fit

# An imbalanced ID-val set (8 images of class 0, one each of classes 1 and 2) and two sets of
# predictions: MAJORITY says class 0 for everything (accuracy 0.8, macro-F1 0.30); BALANCED gets
# both rare classes and 5 of class 0 (accuracy 0.7, macro-F1 0.72).
LABELS = torch.tensor([0] * 8 + [1, 2])
MAJORITY = torch.tensor([0] * 10)
BALANCED = torch.tensor([0] * 5 + [1] * 3 + [1, 2])
F1_SET = EvalSet("id_test", ood=False, metric="macro_f1")


def _logits(preds, n_classes=3):
    return torch.nn.functional.one_hot(preds, n_classes).float() * 5.0


class ValSet(torch.utils.data.TensorDataset):
    """Each 'image' is its own index, so a scripted classifier can answer per image."""

    def __init__(self):
        super().__init__(torch.arange(len(LABELS)), LABELS)
        self.labels = LABELS


class Scripted(nn.Module):
    """A classifier whose logits are fixed in advance (one row per val image)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, index):
        return self.logits[index]


def test_the_two_predictions_disagree_on_accuracy_and_macro_f1():
    assert accuracy(_logits(MAJORITY), LABELS) > accuracy(_logits(BALANCED), LABELS)
    assert macro_f1(_logits(MAJORITY), LABELS) < macro_f1(_logits(BALANCED), LABELS)


def _context(metric_set=F1_SET):
    bench = dataclasses.replace(get_benchmark("embedded"), eval_sets=[metric_set])
    ctx = Context(
        benchmark=bench,
        pretrained=None,
        data_dir=None,
        captions_dir=None,
        device=torch.device("cpu"),
        tokenizer=None,
        train_transform=None,
        eval_transform=None,
        seed=0,
    )
    ctx._val = ValSet()
    return ctx


class ScriptedTask(Task):
    """A toy regression whose classifier's ID-val predictions are scripted per epoch (epoch 0:
    the starting weights)."""

    def __init__(self, ctx, predictions):
        torch.manual_seed(0)
        self.ctx, self.predictions, self.calls = ctx, list(predictions), 0
        self.module = nn.Linear(3, 1)
        x = torch.randn(32, 3)
        self.train_data = torch.utils.data.TensorDataset(x, x.sum(1))

    def loss(self, batch):
        x, y = batch
        return ((self.module(x).squeeze(1) - y) ** 2).mean()

    def validate(self):
        logits = self.predictions[self.calls]
        self.calls += 1
        return self.ctx.validate(Scripted(logits))

    def save(self, path, info):
        torch.save({"w": self.module.weight.detach().clone(), "info": info}, path)


CFG = TrainConfig(epochs=2, lr=0.05, wd=0.0, batch_size=8, warmup_steps=0, seed=0)


def _fit(tmp_path, task, **kw):
    result = fit(
        task,
        CFG,
        out=tmp_path / "best.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=lambda m: None,
        **kw,
    )
    return result, torch.load(tmp_path / "best.pt", weights_only=True)


def test_epoch_is_picked_on_the_benchmarks_id_metric(tmp_path):
    # accuracy would keep epoch 1 (MAJORITY); iWildCam's macro-F1 keeps epoch 2 (BALANCED)
    task = ScriptedTask(_context(), [_logits(MAJORITY), _logits(BALANCED)])
    result, saved = _fit(tmp_path, task)
    assert result.best_epoch == 2
    assert saved["info"]["val_metric"] == "macro_f1"
    assert saved["info"]["best_val_score"] == pytest.approx(macro_f1(_logits(BALANCED), LABELS))
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].split(",")[4:7] == ["val_metric", "val_score", "val_loss"]
    assert log[1].split(",")[4] == "macro_f1"


def test_accuracy_benchmark_still_selects_on_accuracy(tmp_path):
    task = ScriptedTask(
        _context(EvalSet("id_test", ood=False)), [_logits(MAJORITY), _logits(BALANCED)]
    )
    result, _ = _fit(tmp_path, task)
    assert result.best_epoch == 1


def test_weight_ensembling_alpha_is_picked_on_the_benchmarks_id_metric(monkeypatch):
    per_alpha = {0.0: MAJORITY, 0.5: BALANCED, 1.0: MAJORITY}
    monkeypatch.setattr(
        flyp.ensemble,
        "interpolated_classifier",
        lambda zs, ft, a, *args: Scripted(_logits(per_alpha[a])),
    )
    monkeypatch.setattr(
        flyp.evaluation,
        "evaluate_classifiers",
        lambda classifiers, *a, **k: [{} for _ in classifiers],
    )
    zs = SimpleNamespace(clip={"w": torch.zeros(1)}, head=None)
    ft = SimpleNamespace(clip={"w": torch.ones(1)}, head=None)
    bench = SimpleNamespace(classnames=["a", "b", "c"], templates=["{}"], id_set=F1_SET)
    rows = ensemble_curve(
        zs, ft, [0.0, 0.5, 1.0], bench, None, val_set=ValSet(), log=lambda m: None
    )
    best = pick_alpha(rows)
    assert best["alpha"] == 0.5  # accuracy would pick alpha 0
    assert best["val_metric"] == "macro_f1"


# The few-shot protocol: epoch 0 (the starting model) is a candidate and the lowest val loss wins.


def _confident(preds, scale):
    return _logits(preds) * scale / 5.0


def test_few_shot_keeps_the_lowest_val_loss_epoch_zero_included(tmp_path):
    # epoch 0: right and confident (lowest loss); epochs 1, 2: better macro-F1 but higher loss
    task = ScriptedTask(
        _context(), [_confident(LABELS, 8.0), _confident(BALANCED, 1.0), _confident(BALANCED, 2.0)]
    )
    start = task.module.weight.detach().clone()
    result, saved = _fit(tmp_path, task, **selection(shots=4))
    assert task.calls == 3  # epoch 0 was validated before any step
    assert result.best_epoch == 0
    torch.testing.assert_close(saved["w"], start)  # the starting weights were kept
    assert (tmp_path / "log.csv").read_text().splitlines()[1].startswith("0,0,")


def test_few_shot_loss_selection_differs_from_metric_selection(tmp_path):
    # macro-F1 is best at epoch 1 (BALANCED, unsure); the loss is lowest at epoch 2
    scripted = [_confident(MAJORITY, 1.0), _confident(BALANCED, 0.5), _confident(MAJORITY, 3.0)]
    by_loss, _ = _fit(
        tmp_path / "loss", ScriptedTask(_context(), scripted), select="val_loss", include_start=True
    )
    by_metric, _ = _fit(tmp_path / "metric", ScriptedTask(_context(), scripted[1:]))
    assert by_loss.best_epoch == 2
    assert by_metric.best_epoch == 1


def test_full_runs_select_on_the_metric_and_few_shot_runs_on_the_loss():
    assert selection(None) == {"select": "metric", "include_start": False}
    assert selection(16) == {"select": "val_loss", "include_start": True}
    # the protocol's switches, where not the default (the FLYP reference's few-shot code)
    assert selection(16, tie="later", augmentation="once") == {
        "select": "val_loss",
        "include_start": True,
        "tie": "later",
        "augmentation": "once",
    }
    with pytest.raises(UserError, match="^tie, augmentation: settings of the few-shot protocol"):
        selection(None, tie="later", augmentation="once")


@pytest.mark.parametrize("tie, kept", [("earlier", 0), ("later", 2)])
def test_a_val_loss_tie_keeps_the_earlier_or_the_later_epoch(tmp_path, tie, kept):
    """Epochs 0, 1, 2 with the same val loss: by default the first is kept; with the FLYP
    reference's `cnt_loss <= min_cnt_loss` (tie "later") the last, whose weights are saved."""
    same = [_confident(BALANCED, 1.0)] * 3
    task = ScriptedTask(_context(), same)
    result, saved = _fit(tmp_path, task, **selection(4, tie=tie))
    assert task.calls == 3 and result.best_epoch == kept
    assert saved["info"]["best_epoch"] == kept
    final = task.module.weight.detach()
    assert torch.equal(saved["w"], final) == (kept == 2)  # training moved the weights


def test_a_tie_on_the_metric_keeps_the_later_epoch_when_asked(tmp_path):
    task = ScriptedTask(_context(), [_logits(BALANCED), _logits(BALANCED)])
    assert _fit(tmp_path / "a", task)[0].best_epoch == 1
    task = ScriptedTask(_context(), [_logits(BALANCED), _logits(BALANCED)])
    assert _fit(tmp_path / "b", task, tie="later")[0].best_epoch == 2


def test_a_bad_tie_or_augmentation_is_refused(tmp_path):
    task = ScriptedTask(_context(), [])
    with pytest.raises(ValueError, match="^tie: expected one of"):
        _fit(tmp_path, task, tie="sometimes")
    with pytest.raises(ValueError, match="^augmentation: expected one of"):
        _fit(tmp_path, task, augmentation="never")


@pytest.mark.parametrize("protocol", [None, {"tie": "later", "augmentation": "once"}])
def test_few_shot_finetuning_records_the_protocol(
    ctx, tmp_path, tiny_tables, tiny_captions, tiny_pretrained, protocol
):
    cfg = TrainConfig(epochs=1, lr=1e-4, wd=0.0, batch_size=4, warmup_steps=0, seed=0)
    result = finetune(
        "embedded",
        tiny_tables,
        tiny_captions,
        tiny_pretrained,
        "ft",
        cfg,
        options={},
        out=tmp_path / "best.safetensors",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        shots=1,
        draw=0,
        protocol=protocol,
        log=lambda m: None,
    )
    from flyp.models import load_checkpoint

    info = load_checkpoint(tmp_path / "best.safetensors").info
    assert info["select"] == "val_loss" and info["val_metric"] == "accuracy"
    # the protocol's switches are recorded where they are not the default, in the checkpoint
    # and in the provenance a draw's results keep (its checkpoint is a temp file)
    assert {k: info[k] for k in ("tie", "augmentation") if k in info} == (protocol or {})
    from flyp.evaluation import provenance

    prov = provenance(
        load_checkpoint(tmp_path / "best.safetensors"), tmp_path / "best.safetensors", tiny_tables
    )
    assert {k: prov[k] for k in ("tie", "augmentation") if k in prov} == (protocol or {})
    assert info["best_epoch"] == result["best_epoch"]
    epochs = [line.split(",")[0] for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1"]


def test_keep_last_keeps_the_last_epoch_of_a_full_run_and_reports_it(tmp_path):
    """presets.<name>.selection: last_epoch (the FLYP reference's ImageNet protocol): the best
    ID-val epoch is 2, the last one 3, and the last one is kept."""
    from flyp.report import selected_on

    assert selection(None, keep_last=True) == {"select": "last", "include_start": False}
    assert selection(16, keep_last=True) == selection(16)  # few-shot keeps its protocol
    scripted = [_logits(MAJORITY), _logits(BALANCED), _logits(MAJORITY)]
    three = dataclasses.replace(CFG, epochs=3)
    kept = {}
    for mode in ("metric", "last"):
        result = fit(
            ScriptedTask(_context(), scripted),
            three,
            out=tmp_path / f"{mode}.pt",
            log_csv=tmp_path / f"{mode}.csv",
            device=torch.device("cpu"),
            info={},
            progress=lambda m: None,
            **selection(None, keep_last=mode == "last"),
        )
        kept[mode] = result.best_epoch
    assert kept == {"metric": 2, "last": 3}
    assert selected_on({"select": "last"}) == "last_epoch"
    assert selected_on({"select": "metric", "val_metric": "accuracy"}) == "val_accuracy"
