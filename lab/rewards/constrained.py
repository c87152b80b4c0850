"""Constrained RLHF: Lagrange multipliers as the weights of component reward models.

Paper: "Confronting Reward Model Overoptimization with Constrained RLHF", Moskovitz et al.,
arXiv 2310.04373 (reference code: tedmoskovitz/ConstrainedRL4LMs, ``ConstrainedPPO``).

The rule: each component RM k is a useful proxy only up to its *proxy point* θ_k: past it, more RM
reward means worse human ratings. The policy therefore maximizes −KL(π‖π_ref) subject to keeping
each RM's expected return J_k at θ_k, and the weights of the RMs become learned Lagrange
multipliers:

    Â_k   = (A_k − mean A_k) / (std A_k + 1e-8)           per-RM advantages, batch-normalized (B,)
    Â_KL  = the same for the advantage of the −KL reward
    σ̃(λ) = sigmoid(λ)  ("squash", the code's default)  or  λ clamped ≥ 0 (no squash)
    A_mix = (K − Σ_k σ̃(λ_k)) · Â_KL + Σ_k σ̃(λ_k) · Â_k                   (squash)
    A_mix = Â_KL + Σ_k λ_k Â_k                                            (no squash)
    L_λ   = Σ_k σ̃(λ_k) · sg[J_k − θ_k]        one SGD step (momentum μ) on λ per batch

where K is the number of component RMs, B the batch size, A_k the advantages computed from RM k's
reward alone, λ_k the multipliers, J_k RM k's expected return, θ_k its threshold, sg a stop-gradient
and μ the SGD momentum. Intuition: ∂L_λ/∂λ_k = σ̃'(λ_k)(J_k − θ_k): once RM k passes its threshold
(J_k > θ_k) its multiplier λ_k falls, the weight moves from RM k to staying near the reference (the
KL term), and J_k is pulled back to θ_k; below the threshold λ_k rises again. Fixed weights have no
such brake: an RM that keeps paying past its proxy point is over-optimized and the true reward
collapses.

Where it departs from PPO/GRPO: only the advantage fed to the clipped loss is mixed.

Choices:
- The paper's gradient-free search for θ (Nelder–Mead) is not implemented: thresholds are given.
- ``kl_advantages`` may be omitted (then Â_KL = 0, i.e. no pull to the reference); reading the
  code's ``kl_advantages`` as the advantage of the −KL reward is the lab's.
- J_k is whatever the caller measures as RM k's expected return (the batch mean of r_k in the lab).
- Batch normalization uses the unbiased std; a batch of one is centred to 0.
- Momentum in the velocity form v ← μ v + ∇, λ ← λ − lr · v (torch SGD); without squash λ is clamped
  at 0 after each step.

Defaults as the reference code: lagrange_lr = 1e-2, SGD momentum 0.1, λ_init ~ N(0, 0.01²),
squash = True.

Example: K = 2, λ = (0, 0): σ̃ = (0.5, 0.5), A_mix = 1.0·Â_KL + 0.5·Â_1 + 0.5·Â_2; with
J_1 − θ_1 = 0.2 the gradient on λ_1 is 0.2·σ'(0) = 0.05, so λ_1 falls by lr·0.05 (no momentum yet).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_positive, check_range, check_tensor
from lab.registry import register
from lab.rewards.multi_objective import check_objectives

NORM_EPS = 1e-8


def _normalize(x: torch.Tensor) -> torch.Tensor:
    # batch whitening with the code's eps; a batch of one is centred to 0
    std = x.std(0, unbiased=True) if x.shape[0] > 1 else torch.zeros_like(x[0])
    return (x - x.mean(0)) / (std + NORM_EPS)


@register("reward", "constrained_lagrangian", paper="Confronting Reward Model Overoptimization with Constrained RLHF",
          arxiv="2310.04373", summary="Component RMs weighted by Lagrange multipliers that hold each RM at its proxy point")
class ConstrainedLagrangian:
    """Mixed advantages from K component RMs and the −KL advantage, weighted by multipliers λ.

    Args:
        thresholds: θ (K,), the proxy point of each RM.
        lagrange_lr: step size of the multiplier SGD (1e-2).
        momentum: SGD momentum of the multipliers (0.1).
        squash: σ̃ = sigmoid (True) or λ clamped ≥ 0 (False).
        init_std: λ_init ~ N(0, init_std²) (0.01).
        generator: draws λ_init.
    """

    def __init__(self, thresholds: Any, *, lagrange_lr: float = 1e-2, momentum: float = 0.1,
                 squash: bool = True, init_std: float = 0.01, generator: torch.Generator | None = None):
        theta = torch.as_tensor(thresholds, dtype=torch.float64, device="cpu")   # bookkeeping: CPU
        check_tensor("thresholds", theta, ndim=1, finite=True)
        if theta.numel() == 0:
            raise ValueError("thresholds must name at least one component RM")
        self.thresholds = theta
        self.lagrange_lr = check_positive("lagrange_lr", lagrange_lr, allow_zero=True)
        self.momentum = check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.squash = bool(squash)
        check_positive("init_std", init_std, allow_zero=True)
        noise = torch.randn(theta.shape[0], generator=generator, dtype=torch.float64,
                            device=generator.device if generator is not None else "cpu").cpu()
        self.lambdas = noise * init_std if squash else (noise * init_std).clamp_min(0.0)
        self.velocity = torch.zeros_like(self.lambdas)

    @property
    def n_components(self) -> int:
        return int(self.thresholds.shape[0])

    def weights(self) -> torch.Tensor:
        """σ̃(λ) (K,): the weight of each RM's advantage."""
        return torch.sigmoid(self.lambdas) if self.squash else self.lambdas.clamp_min(0.0)

    def kl_weight(self) -> float:
        """Weight of Â_KL: K − Σ σ̃(λ) (squash) or 1."""
        return float(self.n_components - self.weights().sum()) if self.squash else 1.0

    def __call__(self, rewards: torch.Tensor, *, kl_advantages: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        """A_mix (B,) from per-RM advantages ``rewards`` (B, K) (or per-RM rewards: they are
        batch-normalized here either way) and the optional −KL advantages (B,)."""
        a = check_objectives(rewards, name="rewards").double()
        if a.shape[1] != self.n_components:
            raise ValueError(f"rewards must have {self.n_components} columns (one per threshold), "
                             f"got shape {tuple(a.shape)}")
        mixed = _normalize(a) @ self.weights().to(a.device)                                    # (B,)
        if kl_advantages is not None:
            check_tensor("kl_advantages", kl_advantages, shape=(a.shape[0],), finite=True)
            mixed = mixed + self.kl_weight() * _normalize(kl_advantages.double())
        metrics = {"constrained/lambda": self.lambdas.tolist(), "constrained/weights": self.weights().tolist(),
                   "constrained/kl_weight": self.kl_weight()}
        return mixed.to(rewards.dtype), metrics

    def update(self, returns: Any) -> dict[str, Any]:
        """One SGD step on L_λ = Σ σ̃(λ_k)·(J_k − θ_k) given the RMs' returns J (K,)."""
        J = torch.as_tensor(returns, dtype=torch.float64, device="cpu")
        check_tensor("returns", J, shape=(self.n_components,), finite=True)
        gap = J - self.thresholds                                                  # J_k − θ_k
        if self.squash:
            s = torch.sigmoid(self.lambdas)
            grad = s * (1 - s) * gap                                               # ∂L_λ/∂λ
        else:
            grad = gap
        self.velocity = self.momentum * self.velocity + grad
        self.lambdas = self.lambdas - self.lagrange_lr * self.velocity
        if not self.squash:
            self.lambdas = self.lambdas.clamp_min(0.0)
        return {"constrained/lambda": self.lambdas.tolist(), "constrained/gap": gap.tolist(),
                "constrained/weights": self.weights().tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {"lambdas": self.lambdas.tolist(), "velocity": self.velocity.tolist(),
                "thresholds": self.thresholds.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lambdas = torch.tensor(state["lambdas"], dtype=torch.float64, device="cpu")
        self.velocity = torch.tensor(state["velocity"], dtype=torch.float64, device="cpu")
        self.thresholds = torch.tensor(state["thresholds"], dtype=torch.float64, device="cpu")


__all__ = ["ConstrainedLagrangian"]
