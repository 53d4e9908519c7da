"""LP: a linear probe, multinomial logistic regression on frozen image features of the pretrained
model (Radford et al. 2021). The inverse regularisation C is chosen on ID-val from a log grid
(options ``log10_c_min``, ``log10_c_max``, ``c_count``: ``c_count`` values evenly spaced in
log10 C; default 1e-2, 1e-1, ..., 1e5; the FLYP reference's ``linear_lbfgs.py`` sweeps
``logspace(-1, 2, 100)``), never on test, by the benchmark's own ID metric (macro-F1 for
iWildCam); each C starts from the previous C's solution. Features come from the cached file
(option ``features``), computed once per model and dataset by ``flyp features``, L2-normalised or
raw as that file says; the classifier applies the head to the same kind of features. The solver
(``flyp.linear_probe``) is sklearn's objective in float32 on the context's device, so it runs at
ImageNet size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flyp.datasets import table_path
from flyp.datasets.tables import read_table
from flyp.features import features_options, read_features
from flyp.io import UserError
from flyp.linear_probe import CHUNK_ROWS, regularisation_path
from flyp.methods import Context, Method, register_method
from flyp.models import ImageClassifier
from flyp.options import Option
from flyp.scoring import METRICS

C_GRID = [10.0**k for k in range(-2, 6)]


def log_grid(log10_min: float, log10_max: float, count: int) -> list[float]:
    """``count`` values of C evenly spaced in log10 from 10**log10_min to 10**log10_max (numpy's
    logspace); log_grid(-2, 5, 8) is C_GRID exactly."""
    if count == 1:
        return [10.0**log10_min]
    step = (log10_max - log10_min) / (count - 1)
    return [10.0 ** (log10_min + i * step) for i in range(count)]


def probe_head(fit, classes: torch.Tensor, n_classes: int) -> torch.nn.Linear:
    """nn.Linear over all n_classes from a fit over the classes seen in training (``classes``,
    sorted); classes never seen in training can never win."""
    weight, bias = fit.coef, fit.intercept  # (K', D), (K',)
    if len(classes) == 2:  # sklearn's binary layout, one row z: logits (0, z)
        weight, bias = F.pad(weight, (0, 0, 1, 0)), F.pad(bias, (1, 0))
    head = torch.nn.Linear(fit.coef.shape[1], n_classes, device=fit.coef.device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        head.weight[classes] = weight
        head.bias[classes] = bias
    return head


def fit_linear_probe(
    train,
    val,
    c_grid=C_GRID,
    *,
    metric: str = "accuracy",
    val_table=None,
    n_classes: int | None = None,
    device=None,
    chunk_rows: int = CHUNK_ROWS,
    **solver,
):
    """(head nn.Linear, chosen C, its val score) from (features, labels) pairs: the C of ``c_grid``
    whose head scores best on val by ``metric`` (a name in flyp.scoring.METRICS, given
    ``val_table`` when it reads one); ties go to the stronger regularisation. ``n_classes``: the
    head's rows (the benchmark's classes; default: the largest label seen + 1, which misses
    classes after the last one that has images)."""
    (xt, yt), (xv, yv) = train, val
    device = device or xt.device
    classes, y_idx = torch.unique(yt, return_inverse=True)
    if len(classes) < 2:
        raise UserError(
            f"linear probe: the training features have {len(classes)} class; expected at least 2"
        )
    n_classes = n_classes or int(max(yt.max(), yv.max())) + 1
    xt, xv = xt.to(device, torch.float32), xv.to(device, torch.float32)
    best = None
    for c, fit in regularisation_path(
        xt, y_idx.to(device), len(classes), c_grid, chunk_rows=chunk_rows, **solver
    ):
        head = probe_head(fit, classes.to(device), n_classes)
        with torch.no_grad():
            logits = torch.cat([head(x).cpu() for x in xv.split(chunk_rows)])  # (N_val, C)
        value = METRICS[metric](logits, yv, val_table)
        if best is None or value > best[2]:
            best = (head, c, value)
    return best


def val_table(ctx: Context):
    """ID-val's table without image bytes, rows as in the features (a metric may read a column,
    e.g. FMoW's region)."""
    df = read_table(table_path(ctx.data_dir, "val")).drop(columns="image", errors="ignore")
    rows = ctx.subset(df["label"].to_numpy(), "val")
    return df if rows is None else df.iloc[rows].reset_index(drop=True)


@register_method("lp")
class LinearProbe(Method):
    trains = False
    seeded = False  # no random draw: the same run for every seed
    description = "logistic regression on frozen image features, C chosen on ID-val"
    inputs = {"features": "features"}
    options = (
        Option("log10_c_min", float, default=-2.0),
        Option("log10_c_max", float, default=5.0),
        Option("c_count", int, default=8, minimum=1),
    )

    def c_grid(self, ctx: Context) -> list[float]:
        low, high = self.option(ctx, "log10_c_min"), self.option(ctx, "log10_c_max")
        if high < low:
            raise UserError(f"option 'log10_c_max' {high:g}: below log10_c_min {low:g}")
        return log_grid(low, high, self.option(ctx, "c_count"))

    def classifier(self, ctx: Context) -> ImageClassifier:
        features = read_features(self.option(ctx, "features"))
        normalize = features_options(self.option(ctx, "features"))["normalize"]
        train, val = (
            ctx.subset_features(features["train"]),
            ctx.subset_features(features["val"], split="val"),
        )
        table = val_table(ctx)
        if len(table) != len(val[1]):
            raise UserError(
                f"{self.option(ctx, 'features')}: {len(val[1])} val features "
                f"for {len(table)} val rows (features of other tables?)"
            )
        metric = ctx.benchmark.id_set.metric
        head, c, value = fit_linear_probe(
            train,
            val,
            self.c_grid(ctx),
            metric=metric,
            val_table=table,
            n_classes=len(ctx.benchmark.classnames),
            device=ctx.device,
        )
        ctx.notes.update(lp_C=c, lp_val_metric=metric, lp_val_score=value)
        if not normalize:  # recorded only off the default: default checkpoints keep their bytes
            ctx.notes["normalize_features"] = False
        return ImageClassifier(ctx.fresh_clip(), head.to(ctx.device), normalize)
