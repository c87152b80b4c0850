"""STEER: reweight each token by how much its update would change the policy's entropy.

Paper: "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective", Hao et al.,
arXiv 2510.10150
(reference code: zz-haooo/STEER, ``compute_token_weights``).

The loss: for a softmax policy, a policy-gradient step on token y at a position with probability x = π(y|·),
entropy H and advantage A changes that position's entropy, to first order, in proportion to

    Ω_{i,t} = | (A_{i,t} / x_old) · x(1 − x) · (log x + H_{i,t}) |

(the importance weight 1/x_old, the logit-gradient size x(1 − x), and log x + H, which says whether
raising y sharpens or flattens the distribution: positive for a likely token, negative for an
unlikely one). Tokens with large Ω would move the entropy most, so STEER gives them the smallest
weight, keeping each step's entropy change moderate; the ones that barely move it are up-weighted:

    linear:       w = clamp(w_max − (Ω − Ω_min)(w_max − w_min)/(Ω_max − Ω_min), w_min, w_max)
                  (w = (w_min + w_max)/2 if Ω_max = Ω_min),                 w ∈ [0.8, 1.2]
    exponential:  k = −ln(w_min)/max(Ω_max, 0.02),  w = clamp(exp(−kΩ), w_min, 1),   w ∈ [0.8, 1]
    L = token_mean( w · max(−ρA, −clip(ρ, 1−ε_low, 1+ε_high)A) ),  dual clip c = 10

with x = clamp(exp(ℓ), 1e-8, 1 − 1e-8), x_old = clamp(exp(ℓ^old), 1e-8, 1), all weights detached
and Ω_min, Ω_max taken over the valid tokens of the call.

Example: x = x_old = 0.5, H = 1, A = 1 -> Ω = 2·0.25·(ln 0.5 + 1) = 0.15343. Three tokens with
Ω = [0, 0.1, 0.2] (linear, [0.8, 1.2]) -> w = [1.2, 1.0, 0.8].

Where it departs from GRPO: a detached per-token weight w multiplies the clipped surrogate
(GRPO: w ≡ 1); clip-higher ε_high = 0.28 and a dual clip as in the paper's runs; no KL.

Choices where the public material is ambiguous:
- Ω_min and Ω_max are over the tensors passed in one call (verl: the micro-batch), so the weights
  depend on how a batch is split; pass the whole batch for reproducible weights.
- The code's variable named ``x_one_minus_x_squared`` computes x(1 − x) without a square; the lab
  follows the code. Non-finite Ω (e.g. from A/x_old overflow) is set to 0 as in the code.
- A = 0 gives Ω = 0 and the maximum weight (harmless: the token's loss is 0).
- In exponential mode ``weight_max`` is not used (w ≤ exp(0) = 1).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lab.checks import check_positive
from lab.registry import register
from lab.rl.core import (
    GlobalNorm, as_mask, check_per_token, clipped_policy_loss, expand_advantages, masked_mean,
    prepare_policy_inputs,
)

PAPER = "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective"


def entropy_change_score(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                         advantages: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """Ω (B, T): the first-order entropy change a PG step on each token would cause (no grad)."""
    x = logprobs.detach().exp().clamp(1e-8, 1.0 - 1e-8)
    x_old = old_logprobs.detach().exp().clamp(1e-8, 1.0)
    # Ω = |(A / x_old) · x(1 − x) · (log x + H)|
    omega = ((advantages / x_old) * x * (1.0 - x) * (torch.log(x) + entropy.detach())).abs()
    return torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega))


def steer_weights(omega: torch.Tensor, mask: torch.Tensor, *, weight_min: float = 0.8,
                  weight_max: float = 1.2, linear: bool = True) -> torch.Tensor:
    """Token weights w (B, T) from Ω: large Ω -> small weight; 0 on invalid tokens."""
    check_positive("weight_min", weight_min)
    check_positive("weight_max", weight_max)
    if weight_max < weight_min:
        raise ValueError(f"weight_max must be >= weight_min, got {weight_min} > {weight_max}")
    valid = mask.bool()
    if not valid.any():
        return torch.zeros_like(omega)
    lo, hi = omega[valid].min(), omega[valid].max()
    if linear:
        if hi > lo:
            # w = w_max − (Ω − Ω_min)(w_max − w_min)/(Ω_max − Ω_min)
            w = weight_max - (omega - lo) * (weight_max - weight_min) / (hi - lo)
            w = w.clamp(weight_min, weight_max)
        else:
            w = torch.full_like(omega, 0.5 * (weight_min + weight_max))
    else:
        if weight_min > 1.0:
            raise ValueError(f"weight_min must be <= 1 in exponential mode, got {weight_min}")
        # k = −ln(w_min)/max(Ω_max, 0.02), w = clamp(exp(−kΩ), w_min, 1)
        k = -math.log(weight_min) / max(float(hi), 0.02)
        w = torch.exp(-k * omega).clamp(weight_min, 1.0)
    return torch.where(valid, w, torch.zeros_like(w))


@register("policy_loss", "steer", paper=PAPER, arxiv="2510.10150",
          summary="PPO-clip with detached per-token weights that damp large entropy changes (STEER)")
def steer(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
          mask: torch.Tensor, *, entropy: torch.Tensor, ref_logprobs: torch.Tensor | None = None,
          weight_min: float = 0.8, weight_max: float = 1.2, linear: bool = True,
          clip_eps_low: float = 0.2, clip_eps_high: float = 0.28, dual_clip: float | None = 10.0,
          beta: float = 0.0, kl_estimator: str = "k3", agg: str = "token_mean",
          norm: GlobalNorm | None = None, return_per_token: bool = False
          ) -> tuple[torch.Tensor, dict[str, Any]]:
    """STEER loss: ``agg(w · pg)`` with w from :func:`steer_weights` of Ω.

    Args:
        logprobs, old_logprobs, advantages, mask: as ``policy_loss/grpo``.
        entropy: (B, T) entropy H of π_θ at each position (detached).
        ref_logprobs, beta, kl_estimator: optional KL loss term (STEER: none).
        weight_min, weight_max: w_min, w_max ([0.8, 1.2] linear; use [0.8, 1.0] with exponential).
        linear: linear map of Ω to w (True) or the exponential map.
        clip_eps_low, clip_eps_high, dual_clip: ε_low 0.2, ε_high 0.28, c = 10 (paper's runs).
        agg, norm, return_per_token: as GRPO (``token_mean``).

    Metrics add ``steer/weight_mean``, ``steer/weight_min``, ``steer/weight_max``,
    ``steer/omega_mean``; with ``return_per_token`` also ``weights`` and ``omega`` (B, T).
    """
    logprobs_f, mask_f, adv, old = prepare_policy_inputs(logprobs, old_logprobs, advantages, mask)
    entropy = check_per_token("entropy", entropy, logprobs_f.shape)
    omega = entropy_change_score(logprobs_f, old, expand_advantages(adv, mask_f), entropy)
    weights = steer_weights(omega, mask_f, weight_min=weight_min, weight_max=weight_max,
                            linear=linear)                                      # (B, T)
    loss, metrics = clipped_policy_loss(
        logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs, entropy=entropy,
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, dual_clip=dual_clip, beta=beta,
        kl_estimator=kl_estimator, agg=agg, norm=norm, token_weights=weights,
        return_per_token=return_per_token)
    valid = as_mask(mask_f).bool()
    metrics["steer/weight_mean"] = float(masked_mean(weights, valid))
    metrics["steer/weight_min"] = float(weights[valid].min()) if valid.any() else 0.0
    metrics["steer/weight_max"] = float(weights[valid].max()) if valid.any() else 0.0
    metrics["steer/omega_mean"] = float(masked_mean(omega, valid))
    if return_per_token:
        metrics["weights"], metrics["omega"] = weights, omega
    return loss, metrics


__all__ = ["entropy_change_score", "steer", "steer_weights"]
