"""AlphaPO: SimPO with the reward's *shape* changed by one parameter α.

Paper: "AlphaPO – Reward shape matters for LLM alignment", Gupta et al., arXiv 2501.03884 (seed 002;
peer: TRL ``CPOConfig(loss_type="alphapo")``).

The loss: SimPO's reward is the log of the length-normalized likelihood π̄ = exp(S̄); AlphaPO replaces
the log by the α-family (a Box–Cox / Tsallis-type transform)::

    r_α(y) = β (1 − π̄(y)^{−α}) / α = −β expm1(−α S̄(y)) / α          (α → 0: β S̄, SimPO)
    L = mean_P [ −log σ( r_α(y_w) − r_α(y_l) − γ ) ]

where S̄ = (1/L) Σ_t m_t ℓ_t is the length-normalized log-prob of a response under π_θ, w/l the
chosen/rejected response, P the number of pairs, β > 0 the reward scale, γ the target margin and
α ∈ R the shape. Intuition: ∂r_α/∂S̄ = β π̄^{−α}: with α > 0 a response's gradient is scaled up the
*less* likely it is (the typically unlikely rejected response is pushed down harder relative to the
chosen one pulled up); with α < 0 likely responses get the larger weight. The paper uses α to
control likelihood displacement and over-optimization; the experiment ``preference_training``
sweeps it. The reward is bounded above by β/α for α > 0 (as π̄ → 1) and falls like −β e^{−αS̄}/α for
very unlikely responses.

Where it departs from SimPO: only in the reward shape (α = 0 is SimPO).

Choices:
- γ is absolute, subtracted outside β(·) (TRL's ``loss="alphapo"`` subtracts γ/β inside β(·): the
  same loss).
- The reward is computed with ``expm1`` for accuracy near α = 0, and α = 0 dispatches to SimPO's log
  reward exactly; negative α is allowed.
- ``label_smoothing``, ``loss_type`` and ``length_normalize`` are SimPO's (shared code path).

Defaults (TRL paper index, Mistral-Instruct, Table 3): α = 0.25, β = 2.5, γ = 0.1; no reference, no
NLL term. Example (spec): S̄_w = −0.5, S̄_l = −1.0 → r/β = −0.53259, −1.13610 →
2.5·0.60351 − 0.1 = 1.40877 → L = 0.21869 (SimPO with the same β, γ: 0.27508).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.registry import register
from lab.preference.simpo import reward_shape_loss


@register("preference_loss", "alphapo", paper="AlphaPO - Reward shape matters for LLM alignment",
          arxiv="2501.03884")
def alphapo(chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, *, chosen_mask: torch.Tensor,
            rejected_mask: torch.Tensor, beta: float = 2.5, gamma: float = 0.1, alpha: float = 0.25,
            label_smoothing: float = 0.0, loss_type: str = "sigmoid",
            length_normalize: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """AlphaPO loss ``mean −log σ(r_α(y_w) − r_α(y_l) − γ)``; see the module docstring."""
    return reward_shape_loss(chosen_logprobs, rejected_logprobs, chosen_mask=chosen_mask,
                             rejected_mask=rejected_mask, beta=beta, gamma=gamma, alpha=alpha,
                             label_smoothing=label_smoothing, loss_type=loss_type,
                             length_normalize=length_normalize)
