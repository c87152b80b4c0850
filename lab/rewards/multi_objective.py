"""Shared pieces of multi-objective reward shaping: weighted sums, Pareto fronts, hypervolume.

Every objective is *maximized* here (negate a loss or a length before passing it in).

Weighted combination (linear scalarization) of K rewards with weights w (K,) or (B, K)::

    R_i = Σ_k w_k r_{i,k}

Pareto dominance: p dominates q when p_k ≥ q_k for every k and p_k > q_k for some k. The Pareto
front of a point set is its non-dominated subset.

Hypervolume of a point set P (N, K) with reference point z (K,): the Lebesgue measure of the region
dominated by P and dominating z,

    HV(P; z) = vol( ∪_{p ∈ P} [z_1, p_1] × … × [z_K, p_K] ),

computed exactly for K = 1, 2, 3 (a sweep in 2-D; slices along the third objective in 3-D). Points
that do not strictly dominate z in every coordinate add nothing. A front that bends *inward*
(non-convex) holds points that no fixed weight vector makes optimal (w·p is maximized at a vertex
of the convex hull), yet they add hypervolume: this is why the lab compares methods by HV.

Example: P = {(1, 3), (2, 2), (3, 1)}, z = (0, 0): HV = 1·3 + 1·2 + 1·1 = 6.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_tensor


def check_weights(weights: Any, n_objectives: int, *, name: str = "weights") -> torch.Tensor:
    """Non-negative finite weights of shape (K,) or (B, K), not all zero in a row (float64)."""
    w = (weights.double() if isinstance(weights, torch.Tensor)
         else torch.as_tensor(weights, dtype=torch.float64, device="cpu"))          # Python numbers: CPU
    check_tensor(name, w, ndim=(1, 2), finite=True)
    if w.shape[-1] != n_objectives:
        raise ValueError(f"{name} must have {n_objectives} entries (one per objective), got shape {tuple(w.shape)}")
    if (w < 0).any():
        raise ValueError(f"{name} must be non-negative, got {w.tolist()}")
    if (w.sum(-1) == 0).any():
        raise ValueError(f"{name} must not be all zero")
    return w


def check_objectives(rewards: Any, *, name: str = "rewards") -> torch.Tensor:
    """A finite, detached (B, K) float tensor of per-objective rewards."""
    check_tensor(name, rewards, ndim=2, finite=True)
    if rewards.requires_grad:
        raise ValueError(f"{name} must be detached (it requires grad); pass {name}.detach()")
    return rewards if rewards.is_floating_point() else rewards.float()


def weighted_sum(rewards: torch.Tensor, weights: Any) -> torch.Tensor:
    """R_i = Σ_k w_k r_{i,k}: ``rewards`` (B, K), ``weights`` (K,) or (B, K) -> (B,) (dtype of rewards)."""
    r = check_objectives(rewards)
    w = check_weights(weights, r.shape[1]).to(device=r.device, dtype=r.dtype)
    if w.dim() == 2 and w.shape[0] != r.shape[0]:
        raise ValueError(f"weights of shape {tuple(w.shape)} must have one row per response ({r.shape[0]})")
    return (r * w).sum(-1)                                                     # (B,)


def _points(points: Any, name: str = "points") -> torch.Tensor:
    p = (points.double() if isinstance(points, torch.Tensor)
         else torch.as_tensor(points, dtype=torch.float64, device="cpu"))           # Python numbers: CPU
    if p.dim() == 1 and p.numel() == 0:
        p = p.reshape(0, 0)
    check_tensor(name, p, ndim=2, finite=True)
    return p


def pareto_mask(points: Any) -> torch.Tensor:
    """(N,) bool: True where the point is not dominated by another (duplicates all kept)."""
    p = _points(points)                                                        # (N, K)
    ge = (p[:, None, :] >= p[None, :, :]).all(-1)                              # ge[j, i]: p_j ≥ p_i
    gt = (p[:, None, :] > p[None, :, :]).any(-1)
    dominated = (ge & gt).any(0)                                               # some j dominates i
    return ~dominated


def pareto_front(points: Any) -> torch.Tensor:
    """The non-dominated points (M, K), sorted by the first objective, duplicates removed."""
    p = _points(points)
    front = p[pareto_mask(p)]
    if front.shape[0] == 0:
        return front
    front = torch.unique(front, dim=0)
    return front[torch.argsort(front[:, 0])]


def _hv2(p: torch.Tensor, ref: torch.Tensor) -> float:
    # sweep along objective 0 descending, keep the running max of objective 1
    order = torch.argsort(p[:, 0], descending=True)
    total, best = 0.0, float(ref[1])
    xs, ys = p[order, 0].tolist(), p[order, 1].tolist()
    for j, (x, y) in enumerate(zip(xs, ys)):
        best = max(best, y)
        nxt = xs[j + 1] if j + 1 < len(xs) else float(ref[0])
        total += (x - nxt) * (best - float(ref[1]))
    return total


def hypervolume(points: Any, reference: Any) -> float:
    """Exact HV of ``points`` (N, K) above ``reference`` (K,), K in {1, 2, 3}; maximization."""
    p = _points(points)
    z = torch.as_tensor(reference, dtype=torch.float64, device=p.device)
    check_tensor("reference", z, ndim=1, finite=True)
    if p.shape[0] == 0:
        return 0.0
    K = p.shape[1]
    if z.shape[0] != K:
        raise ValueError(f"reference must have {K} entries like the points, got {z.shape[0]}")
    if K not in (1, 2, 3):
        raise ValueError(f"hypervolume is exact for 1 to 3 objectives here, got {K}")
    p = p[(p > z).all(-1)]                                                     # only points above z count
    if p.shape[0] == 0:
        return 0.0
    if K == 1:
        return float(p[:, 0].max() - z[0])
    if K == 2:
        return _hv2(p, z)
    # K = 3: slice along objective 2; between consecutive levels the dominated 2-D area is constant
    levels = sorted(set(p[:, 2].tolist()), reverse=True)
    total = 0.0
    for j, level in enumerate(levels):
        below = levels[j + 1] if j + 1 < len(levels) else float(z[2])
        total += _hv2(p[p[:, 2] >= level, :2], z[:2]) * (level - below)
    return total


def hypervolume_contribution(point: Any, points: Any, reference: Any) -> float:
    """ΔHV = HV(P ∪ {v}) − HV(P): how much ``point`` v (K,) enlarges the dominated region of P."""
    v = _points(torch.as_tensor(point, dtype=torch.float64, device=point.device if isinstance(point, torch.Tensor)
                                else "cpu").reshape(1, -1), "point")
    p = _points(points)
    if p.shape[0] and p.shape[1] != v.shape[1]:
        raise ValueError(f"point has {v.shape[1]} objectives, points have {p.shape[1]}")
    union = torch.cat([p.reshape(-1, v.shape[1]), v])
    return hypervolume(union, reference) - hypervolume(p.reshape(-1, v.shape[1]), reference)


__all__ = ["check_weights", "check_objectives", "weighted_sum", "pareto_mask", "pareto_front",
           "hypervolume", "hypervolume_contribution"]
