"""LP: a linear probe, multinomial logistic regression (lbfgs) on frozen, L2-normalised image
features of the pretrained model (Radford et al. 2021). The inverse regularisation C is chosen on
ID-val from a log grid, never on test. Features come from the cached file (option ``features``),
computed once per model and dataset by ``flyp features``."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from flyp.features import read_features
from flyp.methods import Context, Method, register_method
from flyp.models import ImageClassifier

C_GRID = [10.0 ** k for k in range(-2, 6)]


def fit_linear_probe(train, val, c_grid=C_GRID, seed: int = 0):
    """(head nn.Linear, chosen C, val accuracy) from (features, labels) pairs."""
    (xt, yt), (xv, yv) = train, val
    best = None
    for c in c_grid:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        model.fit(xt.numpy(), yt.numpy())
        acc = float((model.predict(xv.numpy()) == yv.numpy()).mean())
        if best is None or acc > best[2]:
            best = (model, c, acc)
    model, c, acc = best
    classes = model.classes_
    n_classes = int(max(yt.max(), yv.max())) + 1
    head = torch.nn.Linear(xt.shape[1], n_classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)  # classes never seen in training can never win
        coef, intercept = model.coef_, model.intercept_
        if len(classes) == 2:  # sklearn keeps one row z for two classes: logits (0, z)
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        head.weight[classes] = torch.as_tensor(coef, dtype=torch.float32)
        head.bias[classes] = torch.as_tensor(intercept, dtype=torch.float32)
    return head, c, acc


@register_method("lp")
class LinearProbe(Method):
    trains = False
    description = "logistic regression on frozen image features, C chosen on ID-val"
    inputs = {"features": "features"}

    def classifier(self, ctx: Context) -> ImageClassifier:
        features = read_features(ctx.option("features", type_=str))
        train, val = ctx.subset_features(features["train"]), ctx.subset_features(
            features["val"], split="val")
        head, c, acc = fit_linear_probe(train, val, seed=ctx.seed)
        ctx.notes.update(lp_C=c, lp_val_accuracy=acc)
        return ImageClassifier(ctx.fresh_clip(), head.to(ctx.device))
