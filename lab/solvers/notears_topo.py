"""NOTEARS objective via topological swaps (TOPO): learn a linear DAG by searching over orders.

Paper: "Optimizing NOTEARS Objectives via Topological Swaps", Deng, Bello, Aragam, Ravikumar,
ICML 2023, arXiv 2305.17277 (reference code: Duntrain/TOPO).

The objective: data X (n, d), weighted adjacency W (d, d) (W_ij != 0 = edge i -> j), linear SEM
X = X W + noise:

    min_W  Q(W) = (1 / 2n) ||X - X W||_F^2     subject to   h(W) = tr(exp(W o W)) - d = 0

h(W) = 0 exactly when W is a DAG (o = elementwise product). Instead of a penalty or augmented
Lagrangian on h, TOPO is bi-level:

- inner: for a topological order pi, W may only have edges from earlier to later nodes; then Q
  separates per node and is solved exactly by least squares of X_j on its predecessors (the lab
  adds an optional ridge ``lambda2``). Such a W is acyclic, so h(W) = 0 by construction.
- outer: improve pi by swapping a pair of nodes. Candidate pairs come from the gradient of Q at the
  inner solution, G = -(1/n) X^T (X - X W): a forbidden edge i -> j (i after j in pi) with large
  |G_ij| would lower the loss if it were allowed, so (i, j) is swapped in pi. A swap is accepted if
  it lowers Q; the search stops when no candidate helps (a local minimum over swaps).

Intuition: given the order, the best DAG is a set of regressions; the hard, non-convex part is
only the order, and the gradient says which reversals are worth trying. With equal noise
variances the least-squares score identifies the true order, so the true DAG is recoverable (the
behaviour test).

Where it departs from NOTEARS: NOTEARS minimizes Q with h(W) = 0 as a smooth constraint
(augmented Lagrangian over W); TOPO keeps every iterate acyclic and searches over orders.

Choices where the paper leaves room (it uses KKT-based candidate sets of two sizes):
- Candidates are the forbidden pairs with |G_ij| > ``grad_tol``, largest first; when none of them
  improves, the remaining forbidden pairs are tried (the larger set) before stopping.
- Like NOTEARS, small weights are cut at ``w_threshold`` at the end.
- The columns of X are centered first; the search starts from ``init_order`` (default 0..d-1);
  the inner least squares takes an optional ridge ``lambda2``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lab.checks import check_int, check_nonneg, check_tensor
from lab.registry import register


@dataclass
class TopoResult:
    """W (d, d) after thresholding, the order, the score Q after each accepted swap, h(W)."""

    W: torch.Tensor
    order: list[int]
    scores: list[float] = field(default_factory=list)
    swaps: int = 0
    h: float = 0.0


def acyclicity(W: torch.Tensor) -> float:
    """h(W) = tr(exp(W o W)) - d: zero iff W is the adjacency of a DAG."""
    return float(torch.trace(torch.linalg.matrix_exp(W * W)) - W.shape[0])


def fit_order(C: torch.Tensor, order: list[int], lambda2: float = 0.0) -> torch.Tensor:
    """Inner problem from the covariance C = X^T X / n: each node regressed on its predecessors in
    ``order``, w = (C_pa,pa + lambda2 I)^{-1} C_pa,j (least squares + ridge); W (d, d)."""
    d = C.shape[0]
    W = torch.zeros(d, d, dtype=C.dtype, device=C.device)
    for pos in range(1, d):
        j, parents = order[pos], order[:pos]
        gram = C[parents][:, parents] + 0.0 * torch.eye(len(parents), dtype=C.dtype, device=C.device)
        W[parents, j] = torch.linalg.solve(gram, C[parents, j])
    return W


def score(X: torch.Tensor, W: torch.Tensor) -> float:
    """Q(W) = (1/2n) ||X - X W||_F^2."""
    return float(0.5 * (X - X @ W).pow(2).sum() / X.shape[0])


def _score_cov(C: torch.Tensor, W: torch.Tensor) -> float:
    # Q(W) = (1/2) tr((I - W)^T C (I - W)), the same number from the covariance
    R = torch.eye(C.shape[0], dtype=C.dtype, device=C.device) - W
    return float(0.5 * torch.trace(R.T @ C @ R))


@register("solver", "notears_topo", paper="Optimizing NOTEARS Objectives via Topological Swaps",
          arxiv="2305.17277")
def notears_topo(X: torch.Tensor, *, lambda2: float = 0.0, w_threshold: float = 0.3, max_swaps: int = 200,
                 grad_tol: float = 1e-3, init_order: list[int] | None = None) -> TopoResult:
    """Minimize the NOTEARS least-squares score over DAGs by topological swaps.

    Args:
        X: data (n, d), one column per variable.
        lambda2: ridge on W in the inner least squares (0 = plain least squares).
        w_threshold: entries with |W_ij| below it are set to 0 at the end (NOTEARS' cut).
        max_swaps: accepted swaps at most.
        grad_tol: a forbidden pair is a first-tier candidate if |G_ij| exceeds it.
        init_order: starting topological order (default 0..d-1).
    """
    check_tensor("X", X, ndim=2, finite=True)
    n, d = X.shape
    if n < 2 or d < 1:
        raise ValueError(f"X must have at least 2 rows and 1 column, got {tuple(X.shape)}")
    check_nonneg("lambda2", lambda2)
    check_nonneg("w_threshold", w_threshold)
    check_int("max_swaps", max_swaps, minimum=0)
    order = list(range(d)) if init_order is None else [int(i) for i in init_order]
    if sorted(order) != list(range(d)):
        raise ValueError(f"init_order must be a permutation of 0..{d - 1}, got {init_order}")
    X = (X - X.mean(dim=0)).to(torch.float64)
    C = X.T @ X / n  # (d, d)
    W = fit_order(C, order, lambda2)
    result = TopoResult(W, order, scores=[_score_cov(C, W)])
    while result.swaps < max_swaps:
        position = {node: k for k, node in enumerate(order)}
        G = -C @ (torch.eye(d, dtype=C.dtype, device=C.device) - W)  # (d, d) gradient of Q = -(1/n) X^T (X - X W)
        forbidden = [(i, j) for i in range(d) for j in range(d) if position[i] > position[j]]
        forbidden.sort(key=lambda ij: -abs(float(G[ij])))
        first = [ij for ij in forbidden if abs(float(G[ij])) > grad_tol]
        rest = [ij for ij in forbidden if abs(float(G[ij])) <= grad_tol]
        improved = False
        for i, j in first + rest:
            trial = list(order)
            trial[position[i]], trial[position[j]] = j, i  # i moves before j
            W_trial = fit_order(C, trial, lambda2)
            trial_score = _score_cov(C, W_trial)
            if trial_score < result.scores[-1] - 1e-12:
                order, W, improved = trial, W_trial, True
                result.scores.append(trial_score)
                result.swaps += 1
                break
        if not improved:
            break
    W = torch.where(W.abs() >= w_threshold, W, torch.zeros_like(W))
    result.W, result.order, result.h = W, order, acyclicity(W)
    return result


def linear_sem(W: torch.Tensor, n: int, *, noise: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Samples (n, d) of X = X W + E with E ~ N(0, noise^2 I); W must be a DAG (it is checked)."""
    check_tensor("W", W, ndim=2)
    d = W.shape[0]
    if acyclicity(W.to(torch.float64)) > 1e-8:
        raise ValueError("W must be acyclic (h(W) = 0)")
    E = noise * torch.randn(n, d, generator=generator, dtype=torch.float64, device=W.device)
    # X (I - W) = E  ->  X = E (I - W)^{-1}
    return E @ torch.linalg.inv(torch.eye(d, dtype=torch.float64, device=W.device) - W.to(torch.float64))
