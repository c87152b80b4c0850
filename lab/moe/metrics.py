"""Balance metrics of one routing step, and the Lagrangian of the primal-dual view.

Symbols: load ``A_i`` (assignments to expert i, :func:`expert_load`), mean load ``L = (1/E) sum_i A_i`` (= kT/E before
dropping), scores ``s_{t,i}``, gates ``g_{t,i}`` (zero off the chosen experts).

    max_violation   MaxVio = max_i A_i / L - 1            (Wang et al., arXiv 2408.15664); 0 = balanced
    idle_experts    #{i : A_i = 0}
    load_entropy    H(A / sum A) / log E in [0, 1]         1 = perfectly balanced
    dropped         dropped assignments / all assignments  (capacity overflow)
    gate_distortion (1/T) sum_t 1/2 sum_i |g_{t,i} - g0_{t,i}|   g0 = the gates the same router
                    would give without balancing (top-k of the unbiased scores); in [0, 1]
    lagrangian      Lagr(x, p) = sum_{t,i} (gamma_{t,i} + p_i) x_{t,i} - L sum_i p_i  at
                    x = TopK(gamma + p): the LP dual function, >= the LP optimum (weak duality)

:func:`assignment_lp` solves the LP relaxation of the balanced assignment (every token k experts,
every expert exactly L = kT/E tokens) with ``scipy.optimize.linprog``: the oracle for the Lagrangian.
"""
from __future__ import annotations

import math

import torch

from lab.checks import check_int, check_tensor


def expert_load(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """``A_i``: float count of (token, slot) assignments per expert, shape (E,)."""
    return torch.bincount(indices.reshape(-1), minlength=n_experts).to(torch.get_default_dtype())


def _check_load(load: torch.Tensor) -> torch.Tensor:
    check_tensor("load", load, ndim=1, finite=True)
    if load.numel() == 0:
        raise ValueError("load must hold at least one expert")
    if (load < 0).any():
        raise ValueError("load must be non-negative")
    return load.to(torch.float64)


def max_violation(load: torch.Tensor) -> float:
    """``max_i A_i / mean(A) - 1``; 0 for an empty step."""
    load = _check_load(load)
    mean = load.mean()
    return 0.0 if mean == 0 else float(load.max() / mean - 1.0)


def idle_experts(load: torch.Tensor) -> int:
    """Number of experts that received no token."""
    return int((_check_load(load) == 0).sum())


def load_entropy(load: torch.Tensor) -> float:
    """Entropy of the load distribution divided by log E (1 = uniform, 0 = one expert)."""
    load = _check_load(load)
    total = load.sum()
    if total == 0 or load.numel() == 1:
        return 1.0
    q = load / total
    h = -(q * torch.log(q.clamp_min(1e-300))).sum()
    return float(h / math.log(load.numel()))


def load_metrics(load: torch.Tensor) -> dict[str, float]:
    """``{"max_violation", "idle_experts", "load_entropy"}`` of one step's load (validated once)."""
    load = _check_load(load)
    mean, e = load.mean(), load.numel()
    q = load / load.sum().clamp_min(1e-300)
    h = -(q * torch.log(q.clamp_min(1e-300))).sum()
    return {"max_violation": 0.0 if mean == 0 else float(load.max() / mean - 1.0),
            "idle_experts": float((load == 0).sum()),
            "load_entropy": 1.0 if mean == 0 or e == 1 else float(h / math.log(e))}


def dropped_fraction(dropped: torch.Tensor) -> float:
    """Fraction of (token, slot) assignments dropped by the capacity limit."""
    check_tensor("dropped", dropped)
    return 0.0 if dropped.numel() == 0 else float(dropped.to(torch.float64).mean())


def dense_gates(indices: torch.Tensor, gates: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Scatter (T..., k) gates into a (T..., E) matrix with zeros off the chosen experts."""
    out = torch.zeros(*gates.shape[:-1], n_experts, dtype=gates.dtype, device=gates.device)
    return out.scatter_add(-1, indices, gates)


def gate_distortion(indices: torch.Tensor, gates: torch.Tensor, ref_indices: torch.Tensor,
                    ref_gates: torch.Tensor, n_experts: int) -> float:
    """Mean total-variation distance between the balanced gates and the unbalanced ones."""
    check_int("n_experts", n_experts, minimum=1)
    if indices.shape != gates.shape or ref_indices.shape != ref_gates.shape:
        raise ValueError(f"indices/gates shapes must match, got {tuple(indices.shape)}, {tuple(gates.shape)}, "
                         f"{tuple(ref_indices.shape)}, {tuple(ref_gates.shape)}")
    g = dense_gates(indices, gates.detach(), n_experts).reshape(-1, n_experts)
    g0 = dense_gates(ref_indices, ref_gates.detach().to(g), n_experts).reshape(-1, n_experts)
    if g.shape != g0.shape:
        raise ValueError("balanced and reference routing must cover the same tokens")
    return 0.0 if g.shape[0] == 0 else float(0.5 * (g - g0).abs().sum(-1).mean())


def lagrangian(gamma: torch.Tensor, bias: torch.Tensor, k: int) -> float:
    """``sum_t TopKSum(gamma_t + p) - L sum_i p_i`` with ``L = kT/E`` (the LP dual function)."""
    check_tensor("gamma", gamma, ndim=2, finite=True, dtype_kind="float")
    t, e = gamma.shape
    check_tensor("bias", bias, shape=(e,), finite=True)
    check_int("k", k, minimum=1)
    if k > e:
        raise ValueError(f"k must be <= n_experts ({e}), got k={k}")
    g = gamma.to(torch.float64)
    p = bias.to(torch.float64)
    target = k * t / e  # L
    # Lagr(x(p), p) = sum_t sum_{i in TopK(gamma_t + p)} (gamma_{t,i} + p_i) - L sum_i p_i
    return float((g + p).topk(k, dim=-1).values.sum() - target * p.sum())


def assignment_lp(gamma: torch.Tensor, k: int) -> float:
    """LP optimum of ``max sum gamma x  s.t. sum_i x_ti = k, sum_t x_ti = kT/E, 0 <= x <= 1``."""
    import numpy as np
    from scipy.optimize import linprog

    check_tensor("gamma", gamma, ndim=2, finite=True, dtype_kind="float")
    t, e = gamma.shape
    check_int("k", k, minimum=1)
    g = gamma.detach().double().cpu().numpy()
    a_tok = np.kron(np.eye(t), np.ones((1, e)))  # sum_i x_ti = k
    a_exp = np.kron(np.ones((1, t)), np.eye(e))  # sum_t x_ti = L
    res = linprog(-g.reshape(-1), A_eq=np.vstack([a_tok, a_exp]),
                  b_eq=np.concatenate([np.full(t, float(k)), np.full(e, k * t / e)]),
                  bounds=(0, 1), method="highs")
    if not res.success:
        raise ValueError(f"balanced assignment LP infeasible for T={t}, E={e}, k={k}: {res.message}")
    return float(-res.fun)


__all__ = ["assignment_lp", "dense_gates", "dropped_fraction", "expert_load", "gate_distortion", "idle_experts",
           "lagrangian", "load_entropy", "load_metrics", "max_violation"]
