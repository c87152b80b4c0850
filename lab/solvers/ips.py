"""IPS: iterative proportional scaling for log-affine (Poisson log-linear) models.

Paper: "Iterative proportional scaling revisited: a modern optimization perspective", She & Tang,
arXiv 1610.02588.

The update: counts y_i in cells i = 1..N, design X (N, p) with columns x_k, means
mu = exp(offset + X beta) with coefficients beta (p,). Objective (Poisson negative
log-likelihood, up to a constant):

    l(beta) = sum_i (mu_i - y_i log mu_i),        score  X^T (mu - y)

Classic IPS (Deming-Stephan raking) cycles over the features k = 1..p and rescales the fitted
table so that its k-th margin matches the data's:

    beta_k <- beta_k + log(x_k^T y / x_k^T mu),    mu_i <- mu_i (x_k^T y / x_k^T mu)^(x_ik)

For a binary feature this is the exact minimizer of l along beta_k: IPS is coordinate descent on
the Poisson likelihood, so l never increases, and its fixed point X^T mu = X^T y (margins matched)
is the maximum-likelihood estimate. The coefficient view (tracking beta, not only mu) is the
paper's "slight modification" that delivers coefficient estimates.

For nonnegative features that are not binary the closed form is no longer exact; the
majorization-minimization step (convexity of e^(x delta) on x in [0, C_k], C_k = max_i x_ik)

    beta_k <- beta_k + (1 / C_k) log(x_k^T y / x_k^T mu)

minimizes an upper bound of l along beta_k, so l still never increases (GIS-type step; equal to
the exact step for binary features). Intuition: each step makes the fitted table agree with the
data on one margin; agreeing on all of them at once is the likelihood's optimality condition.

Where it departs from classic IPS: it tracks beta as well as mu, and takes the MM step for
nonnegative non-binary features. Features of both signs (the paper's general surrogate), block,
momentum and regularized variants are [unverified] and not implemented: negative features raise a
ValueError.

Choices:
- Start from beta = 0, i.e. mu = exp(offset) (mu = 1 without an offset).
- A zero data margin x_k^T y = 0 (an all-zero column of X included) has no MLE (beta_k -> -inf)
  and raises.
- ``order="random"`` draws a new permutation of the features every sweep.
- Stop when max_k |x_k^T (y - mu)| <= tol * (1 + max_k x_k^T y).

:func:`table_design` builds the design of a hierarchical log-linear model on a contingency table.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from lab.checks import check_choice, check_int, check_positive, check_tensor
from lab.registry import register


@dataclass
class IPSResult:
    """beta (p,), mu (N,), the Poisson NLL after every sweep (nll[0] = start), convergence flag."""

    beta: torch.Tensor
    mu: torch.Tensor
    nll: list[float] = field(default_factory=list)
    max_score: list[float] = field(default_factory=list)
    converged: bool = False


def poisson_nll(y: torch.Tensor, mu: torch.Tensor) -> float:
    """l = sum_i (mu_i - y_i log mu_i) (0 log 0 = 0)."""
    return float((mu - torch.where(y > 0, y * torch.log(mu), torch.zeros_like(mu))).sum())


def table_design(shape: tuple[int, ...], margins: tuple[tuple[int, ...], ...], *,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Design (prod(shape), p) of the log-linear model with the given margins of a table.

    One binary column per cell of each marginal table: ``margins=((0,), (1,))`` on a 2x2 table is
    the independence model (row and column indicators); cells are in C (row-major) order.
    """
    cells = list(itertools.product(*[range(s) for s in shape]))
    columns = []
    for axes in margins:
        for axis in axes:
            check_int("margins", axis, minimum=0)
            if axis >= len(shape):
                raise ValueError(f"margins refer to axis {axis} of a {len(shape)}-way table")
        for value in itertools.product(*[range(shape[a]) for a in axes]):
            columns.append([float(all(c[a] == v for a, v in zip(axes, value))) for c in cells])
    return torch.tensor(columns, dtype=torch.float64, device=device).T  # (N, p)


@register("solver", "ips", paper="Iterative proportional scaling revisited: a modern optimization perspective",
          arxiv="1610.02588")
def ips(y: torch.Tensor, X: torch.Tensor, *, offset: torch.Tensor | None = None, max_sweeps: int = 100,
        tol: float = 1e-8, order: str = "cyclic", generator: torch.Generator | None = None) -> IPSResult:
    """Fit mu = exp(offset + X beta) to counts ``y`` (N,) by iterative proportional scaling.

    Args:
        y: nonnegative counts (N,).
        X: nonnegative design (N, p); binary columns get the exact IPS step, others the MM step.
        offset: log-offset (N,); None = 0 (so mu starts at 1).
        max_sweeps: passes over all features.
        tol: stop when max_k |x_k^T (y - mu)| <= tol * (1 + max_k x_k^T y).
        order: ``"cyclic"`` or ``"random"`` (a fresh permutation each sweep, from ``generator``).
    """
    check_tensor("y", y, ndim=1, finite=True)
    check_tensor("X", X, ndim=2, finite=True)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X must have {y.shape[0]} rows (one per cell of y), got {X.shape[0]}")
    if (y < 0).any():
        raise ValueError("y must be nonnegative counts")
    if (X < 0).any():
        raise ValueError("X must be nonnegative (features of both signs are not supported)")
    check_int("max_sweeps", max_sweeps, minimum=1)
    check_positive("tol", tol)
    check_choice("order", order, ("cyclic", "random"))
    y, X = y.to(torch.float64), X.to(torch.float64)
    N, p = X.shape
    margins = X.T @ y  # (p,) data margins x_k^T y
    if (margins <= 0).any():
        k = int(torch.nonzero(margins <= 0)[0])
        raise ValueError(f"feature {k} has a zero data margin x_k^T y = 0: the MLE does not exist")
    scale = X.max(dim=0).values  # (p,) C_k
    if (scale <= 0).any():
        raise ValueError("X has an all-zero column")
    log_mu = (torch.zeros(N, dtype=torch.float64, device=y.device) if offset is None
              else offset.to(torch.float64).clone())
    beta = torch.zeros(p, dtype=torch.float64, device=y.device)
    mu = log_mu.exp()
    result = IPSResult(beta, mu, nll=[poisson_nll(y, mu)])
    g = generator or torch.Generator(device=y.device).manual_seed(0)
    for _ in range(max_sweeps):
        features = torch.randperm(p, generator=g, device=g.device).tolist() if order == "random" else range(p)
        for k in features:
            # beta_k <- beta_k + (1/C_k) log(x_k^T y / x_k^T mu)
            delta = torch.log(margins[k] / (X[:, k] @ mu)) / scale[k]
            beta[k] += delta
            log_mu = log_mu + delta * X[:, k]
            mu = log_mu.exp()  # (N,)
        result.nll.append(poisson_nll(y, mu))
        score = float((X.T @ (y - mu)).abs().max())
        result.max_score.append(score)
        if score <= tol * (1.0 + float(margins.max())):
            result.converged = True
            break
    result.beta, result.mu = beta, mu
    return result


def fit_table(table: torch.Tensor, margins: tuple[tuple[int, ...], ...], *, max_sweeps: int = 100,
              tol: float = 1e-10) -> tuple[torch.Tensor, IPSResult]:
    """IPS fit of a hierarchical log-linear model to a contingency ``table``; returns (fitted table, result)."""
    check_tensor("table", table, finite=True)
    X = table_design(tuple(table.shape), margins, device=table.device)
    result = ips(table.reshape(-1), X, max_sweeps=max_sweeps, tol=tol)
    return result.mu.reshape(table.shape), result
