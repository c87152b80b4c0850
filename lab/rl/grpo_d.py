"""GRPO-D: GRPO with a dynamic KL coefficient that first falls (explore) and then rises (exploit).

Paper: "OThink-MR1: Stimulating multimodal generalized reasoning capabilities via dynamic
reinforcement learning", arXiv 2503.16081 (eqs. 2-5).

The loss is GRPO's (``spec/policy_losses.md``, Part A)::

    L(θ; s) = agg_{seq_mean_token_mean}( max(−ρA, −clip(ρ, 1−ε_low, 1+ε_high)A) + β(s)·k3(ℓ, ℓ^ref) )

with ρ = exp(ℓ − ℓ^old), A the (group-normalized) advantages and k3 = exp(−Δ) − 1 + Δ,
Δ = ℓ − ℓ^ref. Only β changes: with s the training step, t = ``total_steps``,
w = ``warm_frac``·t and β_mid = (β_min + β_max)/2,

    β(s) = β_mid − (β_mid − β_min)·s/w                        for 0 ≤ s ≤ w   (falls: explore)
    β(s) = β_min + (β_max − β_min)·(s − w)/(t − w)           for w < s ≤ t   (rises: exploit)

Intuition: like ε-greedy, loosen the leash to the reference early so the policy can move, then
tighten it so the gains are kept.

Where it departs from GRPO: β is a function of the step instead of a constant (0.04 in
DeepSeekMath); nothing else changes.

Choices where the paper is silent:
- Steps past ``total_steps`` keep β = β_max (the schedule is clamped), negative steps are errors.
- Defaults β_min = 0.0, β_max = 0.02 are the paper's geometry-reasoning setting (its visual
  counting setting is β_min = 0.04, β_max = 0.1); ``warm_frac`` = w/t = 0.3 as in the paper.
- The schedule is exposed on its own as :func:`kl_schedule` so a panel can plot it.

``policy_optimization`` hands every loss the batch entries ``step`` and ``total_steps``, so
``loss="grpo_d(beta_min=..., beta_max=...)"`` follows the schedule over the run (metric
``grpo_d/beta``).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_positive, check_range
from lab.registry import register
from lab.rl.core import GlobalNorm, clipped_policy_loss

PAPER = ("OThink-MR1: Stimulating multimodal generalized reasoning capabilities via dynamic "
         "reinforcement learning")


def kl_schedule(step: int, total_steps: int, *, beta_min: float = 0.0, beta_max: float = 0.02,
                warm_frac: float = 0.3) -> float:
    """β(s) of GRPO-D: linear from β_mid down to β_min over the first w = warm_frac·t steps,
    then linear up to β_max at step t (clamped at β_max afterwards)."""
    step = check_int("step", step, minimum=0)
    total_steps = check_int("total_steps", total_steps, minimum=1)
    beta_min = check_positive("beta_min", beta_min, allow_zero=True)
    beta_max = check_positive("beta_max", beta_max, allow_zero=True)
    if beta_max < beta_min:
        raise ValueError(f"beta_max must be >= beta_min, got beta_min={beta_min}, beta_max={beta_max}")
    warm_frac = check_range("warm_frac", warm_frac, 0.0, 1.0, lo_open=True, hi_open=True)
    s = min(step, total_steps)
    w = warm_frac * total_steps
    beta_mid = 0.5 * (beta_min + beta_max)
    if s <= w:
        # β(s) = β_mid − (β_mid − β_min)·s/w   (clamped: rounding must not go below β_min)
        return max(beta_min, beta_mid - (beta_mid - beta_min) * s / w)
    # β(s) = β_min + (β_max − β_min)·(s − w)/(t − w)
    return min(beta_max, beta_min + (beta_max - beta_min) * (s - w) / (total_steps - w))


@register("policy_loss", "grpo_d", paper=PAPER, arxiv="2503.16081",
          summary="GRPO whose KL coefficient falls then rises over training (GRPO-D)")
def grpo_d(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
           mask: torch.Tensor, *, step: int, total_steps: int,
           ref_logprobs: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
           beta_min: float = 0.0, beta_max: float = 0.02, warm_frac: float = 0.3,
           clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, kl_estimator: str = "k3",
           agg: str = "seq_mean_token_mean", norm: GlobalNorm | None = None,
           return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """GRPO loss with β = :func:`kl_schedule` (step, total_steps); metric ``grpo_d/beta``.

    Args:
        logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy: as ``policy_loss/grpo``.
        step: s, the current training step (0-based).
        total_steps: t, the length of the run.
        beta_min, beta_max: β_min, β_max of the schedule.
        warm_frac: w/t, the share of the run during which β falls.
        clip_eps_low, clip_eps_high, kl_estimator, agg, norm, return_per_token: as GRPO.
    """
    beta = kl_schedule(step, total_steps, beta_min=beta_min, beta_max=beta_max, warm_frac=warm_frac)
    loss, metrics = clipped_policy_loss(
        logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs, entropy=entropy,
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, beta=beta,
        kl_estimator=kl_estimator, agg=agg, norm=norm, return_per_token=return_per_token)
    metrics["grpo_d/beta"] = beta
    return loss, metrics


__all__ = ["grpo_d", "kl_schedule"]
