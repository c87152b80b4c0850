"""AlphaPO: SimPO with the reward's *shape* changed by one parameter α.

"AlphaPO – Reward shape matters for LLM alignment", arXiv 2501.03884 (seed 002).

SimPO's reward is the log of the length-normalized likelihood π̄ = exp(S̄). AlphaPO replaces the
log by the α-family (a Box–Cox / Tsallis-type transform)::

    r_α(y) = β (1 − π̄(y)^{−α}) / α = −β expm1(−α S̄(y)) / α          (α → 0: β S̄, SimPO)
    L = mean_P [ −log σ( r_α(y_w) − r_α(y_l) − γ ) ]

Why the shape matters: ∂r_α/∂S̄ = β π̄^{−α}. With α > 0 the gradient of a response is scaled up
the *less* likely it is (the typically low-likelihood rejected response is pushed down harder
relative to the chosen one pulled up); with α < 0 likely responses get the larger weight. The
paper uses α to control likelihood displacement and over-optimization; the experiment
``preference_training`` sweeps it. The reward is bounded above by β/α for α > 0 (as π̄ → 1) and
falls like −β e^{−αS̄}/α for very unlikely responses; computed with ``expm1`` for accuracy near
α = 0, and α = 0 dispatches to SimPO's log reward exactly.

Defaults (TRL paper index, Mistral-Instruct, Table 3): α = 0.25, β = 2.5, γ = 0.1 (absolute, TRL's
``loss="alphapo"`` subtracts γ/β inside β(·)); no reference, no NLL term. Example (spec):
S̄_w = −0.5, S̄_l = −1.0 → r/β = −0.53259, −1.13610 → 2.5·0.60351 − 0.1 = 1.40877 → L = 0.21869
(SimPO with the same β, γ: 0.27508). Departs from SimPO only in the reward shape.
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
