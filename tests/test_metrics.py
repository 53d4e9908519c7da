"""The WILDS metrics: macro-F1 (iWildCam), worst-region accuracy (FMoW), on hand-made cases."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from flyp.datasets import EvalSet
from flyp.scoring import METRICS, macro_f1, score, worst_region_accuracy


def one_hot_logits(preds, n_classes):
    """Logits whose argmax is ``preds``."""
    return torch.nn.functional.one_hot(torch.tensor(preds), n_classes).float()


def test_macro_f1_averages_over_the_labels_present_in_y_true_only():
    labels = torch.tensor([0, 0, 1, 1, 2])
    logits = one_hot_logits([0, 1, 1, 1, 3], 4)  # class 3 is predicted but never true
    # class 0: TP 1, FP 0, FN 1 -> 2/3; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 0 -> 0.
    expected = (2 / 3 + 4 / 5 + 0) / 3
    assert macro_f1(logits, labels) == pytest.approx(expected)
    # Counting class 3 (F1 0) would give a quarter less: the metric must not.
    assert macro_f1(logits, labels) != pytest.approx((2 / 3 + 4 / 5) / 4)


def test_macro_f1_matches_sklearn_with_labels_of_y_true():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 12, 200)
        y[y == 5] = 6  # class 5 never true, sometimes predicted
        p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 12, 200))
        expected = f1_score(y, p, average="macro", labels=np.unique(y))
        got = macro_f1(one_hot_logits(p.tolist(), 12), torch.tensor(y))
        assert got == pytest.approx(expected, abs=1e-6)


def test_perfect_and_hopeless_predictions():
    labels = torch.tensor([2, 0, 1, 2])
    assert macro_f1(one_hot_logits([2, 0, 1, 2], 3), labels) == pytest.approx(1.0)
    assert macro_f1(one_hot_logits([0, 1, 2, 0], 3), labels) == pytest.approx(0.0)


def test_worst_region_accuracy_takes_the_worst_region_and_ignores_other():
    table = pd.DataFrame(
        {"region": ["Asia", "Asia", "Europe", "Europe", "Europe", "Other", "Other", "Africa"]}
    )
    labels = torch.tensor([0, 1, 2, 2, 0, 1, 1, 0])
    preds = [0, 0, 2, 2, 1, 0, 0, 0]  # Asia 1/2, Europe 2/3, Other 0/2, Africa 1/1
    logits = one_hot_logits(preds, 3)
    assert worst_region_accuracy(logits, labels, table) == pytest.approx(0.5)
    # Without the exclusion, "Other" (0/2) would be the worst; the plain accuracy is 5/8.
    table_no_other = table.replace({"Other": "Oceania"})
    assert worst_region_accuracy(logits, labels, table_no_other) == pytest.approx(0.0)


def test_worst_region_accuracy_needs_the_region_column():
    logits, labels = one_hot_logits([0, 1], 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="region"):
        worst_region_accuracy(logits, labels, pd.DataFrame({"label": [0, 1]}))
    with pytest.raises(ValueError, match="Other"):
        worst_region_accuracy(logits, labels, pd.DataFrame({"region": ["Other", "Other"]}))


def test_metrics_are_registered_and_used_by_score():
    assert {"macro_f1", "worst_region_accuracy"} <= set(METRICS)
    table = pd.DataFrame({"region": ["Asia", "Europe", "Europe"]})
    labels = torch.tensor([0, 1, 1])
    logits = one_hot_logits([0, 1, 0], 2)
    assert score(
        logits, labels, EvalSet("t", ood=True, metric="worst_region_accuracy"), table
    ) == pytest.approx(0.5)
    assert score(logits, labels, EvalSet("t", ood=True, metric="macro_f1"), table) == pytest.approx(
        (2 / 3 + 2 / 3) / 2
    )
