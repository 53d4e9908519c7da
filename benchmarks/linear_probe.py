"""Time the linear probe's C search: the old solver (sklearn LogisticRegression, lbfgs, float64, one
cold fit per C, max_iter 2000) against flyp.linear_probe (float32, chunked, warm-started L-BFGS),
on the same synthetic features, the same C grid and the same stopping tolerance:

    python benchmarks/linear_probe.py                       # 20,000 x 512, 100 classes
    python benchmarks/linear_probe.py --n 5000 --skip-old   # the new solver only

Prints, per C, each solver's seconds and iterations and val accuracy, then the totals, the C each
picks and how often their val predictions agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from flyp.linear_probe import TOL, regularisation_path
from flyp.methods.lp import C_GRID


def features(n: int, dim: int, n_classes: int, seed: int):
    """L2-normalised rows around one random centre per class, noisy enough to overlap (like CLIP
    features of a hard dataset: not separable, so weak C still has an optimum)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim))
    y = rng.integers(0, n_classes, n)
    x = centers[y] + 6.0 * rng.normal(size=(n, dim))  # about 75% val accuracy at 100 classes
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def time_old(x, y, xv, yv):
    """The sklearn solver as flyp/methods/lp.py used it: {C: (seconds, iterations, val acc,
    predictions)}."""
    out = {}
    for c in C_GRID:
        start = time.perf_counter()
        model = LogisticRegression(C=c, max_iter=2000, tol=TOL).fit(x.astype(np.float64), y)
        seconds = time.perf_counter() - start
        pred = model.predict(xv.astype(np.float64))
        out[c] = (seconds, int(model.n_iter_.max()), float((pred == yv).mean()), pred)
        print(f"old C={c:g}: {seconds:.1f} s", flush=True)
    return out


def time_new(x, y, xv, yv, n_classes):
    out = {}
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    start = time.perf_counter()
    for c, fit in regularisation_path(xt, yt, n_classes, C_GRID):
        seconds = time.perf_counter() - start
        pred = fit.logits(torch.from_numpy(xv)).argmax(1).numpy()
        out[c] = (seconds, fit.n_iter, float((pred == yv).mean()), pred)
        print(f"new C={c:g}: {seconds:.1f} s", flush=True)
        start = time.perf_counter()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="training rows")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--skip-old", action="store_true", help="time the new solver only")
    args = parser.parse_args()
    x, y = features(args.n + args.n // 4, args.dim, args.classes, seed=0)
    x, y, xv, yv = x[: args.n], y[: args.n], x[args.n :], y[args.n :]  # train, val (a quarter)
    print(
        f"{args.n} x {args.dim} features, {args.classes} classes, {len(yv)} val rows, "
        f"C grid {C_GRID}, tol {TOL}, torch threads {torch.get_num_threads()}"
    )
    new = time_new(x, y, xv, yv, args.classes)
    old = None if args.skip_old else time_old(x, y, xv, yv)
    print(
        f"{'C':>8} {'old s':>8} {'old it':>7} {'old acc':>8} {'new s':>8} {'new it':>7} "
        f"{'new acc':>8} {'same pred':>9}"
    )
    for c in C_GRID:
        o = old[c] if old else (float("nan"), 0, float("nan"), None)
        s, it, acc, pred = new[c]
        same = float((o[3] == pred).mean()) if old else float("nan")
        print(
            f"{c:>8g} {o[0]:>8.1f} {o[1]:>7d} {o[2]:>8.4f} {s:>8.1f} {it:>7d} {acc:>8.4f} "
            f"{same:>9.4f}"
        )
    best = {
        name: max(C_GRID, key=lambda c, r=r: r[c][2])
        for name, r in (("old", old), ("new", new))
        if r
    }
    total_old = sum(r[0] for r in old.values()) if old else float("nan")
    print(
        f"total: old {total_old:.1f} s, new {sum(r[0] for r in new.values()):.1f} s; "
        f"chosen C: {best}"
    )


if __name__ == "__main__":
    main()
