"""Balance metrics of one routing step, and the Lagrangian of the primal-dual view.

Symbols: load ``A_i`` (assignments to expert i, :func:`expert_load`), mean load ``L = (1/E) sum_i A_i`` (= kT/E before
dropping), scores ``s_{t,i}``, gates ``g_{t,i}`` (zero off the chosen experts).

    max_violation   MaxVio = max_i A_i / L - 1            (Wang et al., arXiv 2408.15664); 0 = balanced
    idle_experts    #{i : A_i = 0}
    load_entropy    H(A / sum A) / log E in [0, 1]         1 = perfectly balanced
    dropped         dropped assignments / all assignments  (capacity overflow)
    interference    |grad_W L_aux| / (|grad_W L_aux| + |grad_W L_task|)  in [0, 1]: the share of the
                    router's gradient that the balancing loss contributes (W = the router weights)
    gate_distortion (1/T) sum_t 1/2 sum_i |s~_{t,i} - s~0_{t,i}|  in [0, 1]: how far balancing has
                    bent the router's scores (the gate values before top-k, s~ = s / sum_i s_i) away
                    from those of an unbalanced twin router - same initialization, same batches,
                    trained on the task loss alone - on the same tokens
    lagrangian      Lagr(x, p) = sum_{t,i} (gamma_{t,i} + p_i) x_{t,i} - L sum_i p_i  at
                    x = TopK(gamma + p): the LP dual function, >= the LP optimum (weak duality)

The two router metrics measure the claim of auxiliary-loss-free balancing (Wang et al., arXiv
2408.15664): an auxiliary loss balances by adding an *interference gradient* to the router, which
pulls its scores away from what the task wants; a selection bias balances without any gradient.
So ``interference`` is exactly 0 for a bias controller (and for no balancer) and grows with an
auxiliary loss's coefficient; ``gate_distortion`` is 0 for no balancer (the twin is the router),
large for a strong auxiliary loss (its gradient flattens the scores) and small for the bias (the
scores only drift because different experts were chosen, so the task gradient saw other gates).

:func:`assignment_lp` solves the LP relaxation of the balanced assignment (every token k experts,
every expert exactly L = kT/E tokens) with ``scipy.optimize.linprog``: the oracle for the Lagrangian.
"""
from __future__ import annotations

import math

import torch

from lab.checks import check_int, check_tensor


def expert_load(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """``A_i``: float count of (token, slot) assignments per expert, shape (E,)."""
    check_int("n_experts", n_experts, minimum=1)
    check_tensor("indices", indices)
    if indices.is_floating_point() or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.numel() and indices.min() < 0:
        raise ValueError(f"indices must lie in [0, {n_experts}), got a negative index")
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts)
    if counts.numel() > n_experts:
        raise ValueError(f"indices must lie in [0, {n_experts}), got {counts.numel() - 1}")
    return counts.to(torch.get_default_dtype())


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
    if dropped.dtype != torch.bool:
        raise TypeError(f"dropped must be a bool tensor (True = dropped), got {dropped.dtype}")
    return 0.0 if dropped.numel() == 0 else float(dropped.to(torch.float64).mean())


def dense_gates(indices: torch.Tensor, gates: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Scatter (T..., k) gates into a (T..., E) matrix with zeros off the chosen experts."""
    check_int("n_experts", n_experts, minimum=1)
    if indices.shape != gates.shape:
        raise ValueError(f"indices and gates must have the same shape, got {tuple(indices.shape)} and "
                         f"{tuple(gates.shape)}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= n_experts):
        raise ValueError(f"indices must lie in [0, {n_experts})")
    out = torch.zeros(*gates.shape[:-1], n_experts, dtype=gates.dtype, device=gates.device)
    return out.scatter_add(-1, indices, gates)


def gate_distortion(scores: torch.Tensor, ref_scores: torch.Tensor) -> float:
    """Mean total-variation distance between a router's scores and a reference router's, ``(T..., E)``.

    Each token's scores are normalized to sum 1 first (softmax scores already do; sigmoid scores
    become ``s / sum_i s_i``). The reference is an unbalanced twin router on the same tokens.
    """
    check_tensor("scores", scores, dtype_kind="float", finite=True)
    check_tensor("ref_scores", ref_scores, dtype_kind="float", finite=True)
    if scores.shape != ref_scores.shape or scores.dim() < 1:
        raise ValueError(f"scores and ref_scores must have the same shape (..., E), got {tuple(scores.shape)} "
                         f"and {tuple(ref_scores.shape)}")
    if (scores < 0).any() or (ref_scores < 0).any():
        raise ValueError("scores must be non-negative (softmax or sigmoid outputs)")
    s = scores.detach().to(torch.float64).reshape(-1, scores.shape[-1])
    s0 = ref_scores.detach().to(torch.float64).reshape(-1, scores.shape[-1])
    if s.shape[0] == 0:
        return 0.0
    s = s / s.sum(-1, keepdim=True).clamp_min(1e-300)
    s0 = s0 / s0.sum(-1, keepdim=True).clamp_min(1e-300)
    # (1/T) sum_t 1/2 sum_i |s_ti - s0_ti|
    return float(0.5 * (s - s0).abs().sum(-1).mean())


def interference(aux_grad: torch.Tensor | list[torch.Tensor] | None,
                 task_grad: torch.Tensor | list[torch.Tensor] | None) -> float:
    """``|g_aux| / (|g_aux| + |g_task|)``: the balancing loss's share of the router gradient, in [0, 1].

    Arguments are the gradients of the auxiliary loss and of the task loss with respect to the
    router weights (a tensor or a list of tensors, e.g. one per layer; ``None`` = zero). 0 when
    both vanish.
    """
    def norm(g):
        if g is None:
            return 0.0
        parts = [g] if isinstance(g, torch.Tensor) else list(g)
        for p in parts:
            check_tensor("gradient", p, finite=True)
        return float(torch.sqrt(sum((p.detach().to(torch.float64) ** 2).sum().cpu() for p in parts)))

    a, t = norm(aux_grad), norm(task_grad)
    return 0.0 if a + t == 0 else a / (a + t)


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
           "interference", "lagrangian", "load_entropy", "load_metrics", "max_violation"]
