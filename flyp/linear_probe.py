"""L2-regularised multinomial logistic regression that scales to ImageNet (1.27M x 512 features,
1,000 classes): float32, full-batch L-BFGS with a strong-Wolfe line search (torch.optim.LBFGS),
the loss and gradient summed over chunks of rows so that at most ``chunk_rows`` x classes logits
exist at once, on whatever device the features are on.

The objective is sklearn's LogisticRegression(solver="lbfgs"), so C means the same thing:
``sum_i log-loss_i + 0.5 / C * ||W||^2``, intercept not penalised; with two classes it is sklearn's
binary model (one row z, logits (0, z)). Like sklearn, L-BFGS minimises it divided by N (same
minimiser, gradients of order one whatever N), and stops when the largest gradient entry of that
mean objective is at most ``tol``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TOL = 1e-4  # max |gradient| of the mean objective at which L-BFGS stops (sklearn's default tol)
MAX_ITER = 2000  # L-BFGS iterations per C at most (the sklearn fit's max_iter it replaces)
HISTORY = 10  # L-BFGS memory (scipy's default maxcor, which sklearn uses)
CHUNK_ROWS = 65_536  # rows whose logits exist at once: 65,536 x 1,000 classes x 4 B = 256 MiB


@dataclass
class LogisticFit:
    """One solution. coef (K', D), intercept (K',): K' = K classes, or 1 for two classes."""

    coef: torch.Tensor
    intercept: torch.Tensor
    n_iter: int
    grad_max: float  # largest gradient entry of the mean objective at the solution

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) logits of rows x (N, D); with two classes (0, z)."""
        return _full_logits(torch.addmm(self.intercept, x, self.coef.T))


def _full_logits(z: torch.Tensor) -> torch.Tensor:
    return F.pad(z, (1, 0)) if z.shape[1] == 1 else z  # binary: class 0's logit is fixed at 0


def chunk_loss_grad(x, y, coef, intercept):
    """Summed log-loss of rows x (B, D) with class indices y (B,), and its gradient with respect to
    coef (K', D) and intercept (K',). Holds (B, K) logits, nothing larger."""
    log_p = torch.log_softmax(_full_logits(torch.addmm(intercept, x, coef.T)), dim=1)  # (B, K)
    loss = -log_p.gather(1, y[:, None]).double().sum()
    d = log_p.exp_()  # d loss / d logits = softmax - onehot(y)
    d[torch.arange(len(y), device=y.device), y] -= 1
    d = d[:, -coef.shape[0] :]  # binary: only z = logit 1 - logit 0 is a parameter
    return loss, d.T @ x, d.sum(0)  # (), (K', D), (K',)


def objective(x, y, coef, intercept, c: float, chunk_rows: int = CHUNK_ROWS):
    """(sum of log-losses + 0.5 / C ||coef||^2) / N and its gradients, accumulated chunk by chunk
    (the per-chunk losses in float64, so that the line search sees small decreases)."""
    n = len(y)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    g_coef, g_intercept = torch.zeros_like(coef), torch.zeros_like(intercept)
    for start in range(0, n, chunk_rows):
        rows = slice(start, start + chunk_rows)
        chunk_loss, gc, gi = chunk_loss_grad(x[rows], y[rows], coef, intercept)
        loss += chunk_loss
        g_coef += gc
        g_intercept += gi
    loss += 0.5 / c * coef.double().square().sum()
    g_coef += coef / c
    return loss / n, g_coef / n, g_intercept / n


def fit_logistic(
    x,
    y,
    n_classes: int,
    c: float,
    init: LogisticFit | None = None,
    *,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
    chunk_rows: int = CHUNK_ROWS,
) -> LogisticFit:
    """Minimise the objective for one C from ``init`` (zeros when None). x (N, D) float32,
    y (N,) class indices in [0, n_classes), on one device."""
    if n_classes < 2:
        raise ValueError(f"logistic regression needs at least 2 classes, got {n_classes}")
    rows = 1 if n_classes == 2 else n_classes
    coef = torch.zeros(rows, x.shape[1], dtype=x.dtype, device=x.device)
    intercept = torch.zeros(rows, dtype=x.dtype, device=x.device)
    if init is not None:
        coef.copy_(init.coef)
        intercept.copy_(init.intercept)
    coef.requires_grad_(True)
    intercept.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [coef, intercept],
        lr=1,
        max_iter=max_iter,
        history_size=HISTORY,
        tolerance_grad=tol,
        line_search_fn="strong_wolfe",
    )

    @torch.no_grad()
    def closure():
        loss, coef.grad, intercept.grad = objective(x, y, coef, intercept, c, chunk_rows)
        return loss.item()

    opt.step(closure)
    n_iter = opt.state[coef]["n_iter"]
    with torch.no_grad():
        _, g_coef, g_intercept = objective(x, y, coef, intercept, c, chunk_rows)
        grad_max = max(g_coef.abs().max().item(), g_intercept.abs().max().item())
    if n_iter >= max_iter:
        warnings.warn(
            f"logistic regression (C={c:g}) stopped at max_iter={max_iter} with "
            f"gradient {grad_max:.2e} > tol {tol:g}",
            stacklevel=2,
        )
    return LogisticFit(coef.detach(), intercept.detach(), n_iter, grad_max)


def regularisation_path(
    x, y, n_classes: int, c_grid, **solver
) -> Iterator[tuple[float, LogisticFit]]:
    """(C, fit) for each C in increasing order (strong to weak regularisation), each fit started
    from the previous solution: a weaker penalty moves the optimum a little, so few iterations."""
    x = x.to(torch.float32)
    fit = None
    for c in sorted(c_grid):
        fit = fit_logistic(x, y, n_classes, c, init=fit, **solver)
        yield c, fit
