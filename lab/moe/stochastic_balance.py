"""StochasticBalance: online matching with stochastic rewards, and a routing baseline built on it.

Paper: "Online Matching with Stochastic Rewards: Advanced Analyses Using Configuration Linear
Programs", Huang et al., arXiv 2309.10289 (NeurIPS 2023; the id, unconfirmed in spec B.8, was
checked against the arXiv listing). The problem is Mehta & Panigrahi's (2012).

The algorithm: offline vertices u (experts), online vertices v (tokens) arriving one by one with
edge success probabilities ``p_{uv}``; v is assigned irrevocably to one *available* neighbour, the
assignment succeeds with probability ``p_{uv}``, and a successfully matched u leaves::

    StochasticBalance:  v -> argmax_{u available} p_{uv} * psi(l_u),   psi(l) = 1 - exp(l - 1)
                        l_u = sum of p_{u v'} over earlier (all failed) assignments to u
    Ranking:            y_u ~ U[0, 1] once;  v -> argmax_{u available} p_{uv} * psi(y_u)
    Greedy:             v -> argmax_{u available} p_{uv}

where psi is the Balance penalty and l_u the budget u has already spent on failures. Intuition: an
expert that has absorbed much failed mass is discounted, so later tokens go where success is still
cheap; the paper raises the proven competitive ratio of StochasticBalance from 0.596 to 0.611 for
vanishing p. The benchmark is the budget LP ``max sum p x  s.t. sum_u x_{uv} <= 1,
sum_v p_{uv} x_{uv} <= 1, x >= 0`` (:func:`lp_benchmark`, ``scipy.optimize.linprog``), an upper
bound on any algorithm's expected number of successes.

Where it departs from the Switch aux loss: as a router (registered ``balancer/stochastic_balance``)
it is a selection controller, like ``aux_free_bias``, with no loss (``aux_loss`` is 0): tokens are
online vertices and experts offline vertices with a budget of ``c * L`` assignments per step
(``L = kT/E``, c the ``capacity_factor``); the controller keeps the consumed budget ``l_i`` and
chooses experts by ``TopK_i (s_{t,i} psi(l_i))``; an expert with ``l_i >= 1`` is unavailable.

Choices:
- psi is the Balance penalty ``1 - exp(l - 1)`` for vanishing probabilities (an [unverified] choice
  of the exact psi), clamped at 0 once the budget is used up.
- An MoE budget replenishes every step instead of being consumed for good, so ``l_i`` is an
  exponential moving average over steps, ``l_i <- rho l_i + (1 - rho) A_i / (c L)`` (rho =
  ``memory`` = 0.9, c = 1.25 by default, c >= 1 required); a step without tokens leaves it as is.
- Each routed token consumes one unit (the reward probability of an assignment is taken as 1), and
  the price is per step, not per token (no sequential loop inside a batch).
- An exhausted expert's selection score is −1, so it is chosen only when k forces it; ``bias`` is
  the log-price ``log psi(l_i)`` (−inf when exhausted).
- On Hugging Face models (:func:`lab.moe.hf.attach`, ``update_rate`` = 1 − rho) the hook re-selects
  with ``s * psi`` and keeps the unbiased gates; on DeepSeek-V3 it keeps the model's group-limited
  routing and ``routed_scaling_factor`` (the selection is not additive; a non-zero
  ``e_score_correction_bias`` is added to it).

State (``state_dict``): ``consumed`` (E,) the budget use l, ``n`` the number of updates.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lab.checks import check_choice, check_int, check_positive, check_range, check_tensor
from lab.registry import register

ALGORITHMS = ("balance", "ranking", "greedy")


def balance_penalty(consumed: torch.Tensor) -> torch.Tensor:
    """``psi(l) = 1 - exp(l - 1)``, clamped at 0 once the budget is used up (l >= 1)."""
    return (1.0 - torch.exp(consumed - 1.0)).clamp_min(0.0)


def online_match(p: torch.Tensor, algorithm: str = "balance", *, trials: int = 1,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Run an online matching algorithm with stochastic rewards; successes per trial, shape (trials,).

    Args:
        p: (n_online, n_offline) success probabilities in [0, 1]; 0 = no edge. Online vertices
            arrive in row order.
        algorithm: ``"balance"`` (StochasticBalance), ``"ranking"`` or ``"greedy"``.
        trials: independent runs, simulated side by side.
        generator: the source of the Bernoulli outcomes (and of Ranking's ranks).
    """
    check_tensor("p", p, ndim=2, finite=True, dtype_kind="float")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("p must hold probabilities in [0, 1]")
    check_choice("algorithm", algorithm, ALGORITHMS)
    check_int("trials", trials, minimum=1)
    n_online, n_offline = p.shape
    p = p.to(torch.float64)
    available = torch.ones(trials, n_offline, dtype=torch.bool)
    consumed = torch.zeros(trials, n_offline, dtype=torch.float64)  # l_u: failed mass so far
    ranks = torch.rand(trials, n_offline, generator=generator, dtype=torch.float64)  # y_u (Ranking)
    successes = torch.zeros(trials, dtype=torch.float64)
    rows = torch.arange(trials)
    for v in range(n_online):  # online arrivals: inherently sequential (vectorized over trials)
        p_v = p[v].expand(trials, n_offline)  # (R, U)
        if algorithm == "balance":
            value = p_v * balance_penalty(consumed)  # p_uv * psi(l_u)
        elif algorithm == "ranking":
            value = p_v * balance_penalty(ranks)  # p_uv * psi(y_u)
        else:
            value = p_v.clone()
        value = torch.where(available & (p_v > 0), value, torch.full_like(value, -1.0))
        best = value.argmax(-1)  # (R,)
        assigned = value[rows, best] >= 0
        p_best = p_v[rows, best]
        success = assigned & (torch.rand(trials, generator=generator, dtype=torch.float64) < p_best)
        successes += success.to(successes.dtype)
        available[rows[success], best[success]] = False
        failed = assigned & ~success
        consumed[rows[failed], best[failed]] += p_best[failed]
    return successes


def lp_benchmark(p: torch.Tensor) -> float:
    """Budget-LP optimum ``max sum p x  s.t. sum_u x_uv <= 1 (per v), sum_v p_uv x_uv <= 1 (per u)``."""
    import numpy as np
    from scipy.optimize import linprog

    check_tensor("p", p, ndim=2, finite=True, dtype_kind="float")
    pv = p.detach().double().cpu().numpy()
    n_on, n_off = pv.shape
    c = -pv.reshape(-1)  # variables x[v, u], row-major
    a_online = np.kron(np.eye(n_on), np.ones((1, n_off)))  # sum_u x_vu <= 1
    a_offline = np.zeros((n_off, n_on * n_off))
    for u in range(n_off):  # sum_v p_vu x_vu <= 1
        a_offline[u, u::n_off] = pv[:, u]
    res = linprog(c, A_ub=np.vstack([a_online, a_offline]), b_ub=np.ones(n_on + n_off),
                  bounds=(0, None), method="highs")
    if not res.success:  # pragma: no cover - the LP is always feasible (x = 0) and bounded
        raise RuntimeError(f"LP failed: {res.message}")
    return float(-res.fun)


@register("balancer", "stochastic_balance",
          paper="Online Matching with Stochastic Rewards: Advanced Analyses Using Configuration Linear Programs",
          arxiv="2309.10289", summary="Balance-penalty routing: choose TopK(s * psi(consumed budget))")
class StochasticBalance:
    """Routing controller with the StochasticBalance price ``psi(l_i)`` on each expert's budget.

    State (``state_dict``): ``consumed`` (E,) the budget use l, ``n`` the number of updates.

    Args:
        n_experts: E.
        capacity_factor: c, the per-step budget of an expert is ``c * L`` assignments (c >= 1).
        memory: rho in [0, 1), weight of the past in the moving average of the consumed budget.
        device: where the consumed budget lives (float64).
    """

    def __init__(self, n_experts: int, *, capacity_factor: float = 1.25, memory: float = 0.9,
                 device: torch.device | str | None = None):
        self.n_experts = check_int("n_experts", n_experts, minimum=1)
        self.capacity_factor = check_positive("capacity_factor", capacity_factor)
        if self.capacity_factor < 1.0:
            raise ValueError(f"capacity_factor must be >= 1 (a budget below the fair share cannot hold "
                             f"all tokens), got {capacity_factor}")
        self.memory = check_range("memory", memory, 0.0, 1.0, hi_open=True)
        self.consumed = torch.zeros(n_experts, dtype=torch.float64, device=device)
        self.n = 0

    @property
    def bias(self) -> torch.Tensor:
        """The log-price ``log psi(l_i)`` (-inf for an exhausted expert), shape (E,)."""
        return torch.log(balance_penalty(self.consumed))

    def selection(self, scores: torch.Tensor) -> torch.Tensor:
        """``s_{t,i} * psi(l_i)``; exhausted experts get -1 so they are chosen only when k forces it."""
        if scores.shape[-1:] != (self.n_experts,):
            raise ValueError(f"scores must have shape (..., {self.n_experts}), got {tuple(scores.shape)}")
        price = balance_penalty(self.consumed).to(scores)  # (E,)
        return torch.where(price > 0, scores * price, torch.full_like(scores, -1.0))

    @torch.no_grad()
    def update(self, load: torch.Tensor) -> dict[str, Any]:
        """Fold the step's load ``A`` (E,) into the consumed budget; returns ``{"bias", "consumed"}``."""
        check_tensor("load", load, shape=(self.n_experts,), finite=True)
        if (load < 0).any():
            raise ValueError("load must be non-negative counts per expert")
        load = load.to(self.consumed)
        if load.sum() > 0:
            self.n += 1
            budget = self.capacity_factor * load.mean()  # c * L
            # l_i <- rho l_i + (1 - rho) A_i / (c L)
            self.consumed.mul_(self.memory).add_((1.0 - self.memory) * load / budget)
        return {"bias": self.bias, "consumed": self.consumed.clone()}

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed.clone(), "n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"consumed", "n"} - set(state)
        if missing:
            raise KeyError(f"state must hold 'consumed' and 'n', missing {sorted(missing)}")
        consumed = check_tensor("consumed", state["consumed"], shape=(self.n_experts,), finite=True)
        if (consumed < 0).any():
            raise ValueError("consumed must be non-negative")
        self.consumed = consumed.detach().to(device=self.consumed.device, dtype=torch.float64).clone()
        self.n = check_int("n", int(state["n"]), minimum=0)

    def __repr__(self) -> str:
        return (f"StochasticBalance(n_experts={self.n_experts}, capacity_factor={self.capacity_factor}, "
                f"memory={self.memory})")


def competitive_ratio(p: torch.Tensor, algorithm: str = "balance", *, trials: int = 200,
                      generator: torch.Generator | None = None) -> float:
    """Mean successes of ``algorithm`` over ``trials`` runs, divided by the budget-LP optimum."""
    opt = lp_benchmark(p)
    if opt <= 0 or math.isclose(opt, 0.0):
        raise ValueError("p has no edge with positive probability: the LP optimum is 0")
    return float(online_match(p, algorithm, trials=trials, generator=generator).mean()) / opt


__all__ = ["ALGORITHMS", "StochasticBalance", "balance_penalty", "competitive_ratio", "lp_benchmark",
           "online_match"]
