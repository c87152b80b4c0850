"""SimPO: a reference-free implicit reward, the length-normalized log-likelihood, with a target margin γ.

Paper: "SimPO: Simple Preference Optimization with a Reference-Free Reward", Meng et al., arXiv
2405.14734 (reference code: princeton-nlp/SimPO). The catalog row lists it with "AlphaPO – Reward
shape matters for LLM alignment", Gupta et al., arXiv 2501.03884, whose parent it is (see
:mod:`lab.preference.alphapo`).

The loss::

    r(y) = β S̄(y),  S̄ = (1/L) Σ_t m_t ℓ_t                 (no reference)
    L = mean_P [ −log σ( β (S̄_w − S̄_l) − γ ) ]

where ℓ_t are the token log-probs of a response under π_θ, m_t its mask, L = Σ_t m_t its length,
w/l the chosen/rejected response, P the number of pairs, β > 0 the reward scale and γ the target
margin. Intuition: DPO's reward β log π/π_ref needs a reference model and is a *sum* over tokens
(long responses get large rewards of either sign), while generation ranks by average
log-likelihood; SimPO uses the generation metric itself as the reward and asks for a margin γ.

Where it departs from DPO: no reference model; the reward is the length-normalized log-likelihood
instead of the log-ratio sum; a target margin γ is subtracted inside the sigmoid.

Choices:
- γ is absolute (as TRL's ``simpo_gamma``); the released code writes the logit as
  ``β·((S̄_w − S̄_l) − γ/β)`` with ``gamma_beta_ratio`` γ/β — the same loss.
- ``label_smoothing`` and ``loss_type="hinge"`` follow the released trainer; no SFT term.
- ``length_normalize=False`` uses sums S (CPO-like, for the notebook's comparison); default True.
- An empty response has S̄ = 0 (its length is clamped to 1).

Defaults from princeton-nlp/SimPO: β = 2.0, γ/β = 0.25 → γ = 0.5 (per-model configs use
β ∈ [2, 10], γ/β ∈ [0.1, 0.8]). Example (spec): β = 2, γ = 1, S̄_w = −0.5, S̄_l = −1 →
2·0.5 − 1 = 0 → L = ln 2.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_number, check_positive
from lab.registry import register
from lab.preference.core import (
    alpha_reward, check_flag, mean_loss, pair_inputs, pair_loss, pair_scores, preference_metrics,
)


def reward_shape_loss(chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, *,
                      chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, beta: float, gamma: float,
                      alpha: float, label_smoothing: float, loss_type: str,
                      length_normalize: bool) -> tuple[torch.Tensor, dict[str, Any]]:
    """The reference-free family: ``−log σ(β (u(S̄_w) − u(S̄_l)) − γ)`` with u the AlphaPO shape."""
    check_positive("beta", beta)
    gamma = check_number("gamma", gamma)
    check_flag("length_normalize", length_normalize)
    batch = pair_inputs(chosen_logprobs, rejected_logprobs, chosen_mask=chosen_mask, rejected_mask=rejected_mask)
    s_w = pair_scores(batch.chosen_logprobs, batch.chosen_mask, length_normalize)     # (P,) S̄_w
    s_l = pair_scores(batch.rejected_logprobs, batch.rejected_mask, length_normalize)  # (P,) S̄_l
    # r = β u_α(S̄);  z = r_w − r_l − γ
    chosen_rewards, rejected_rewards = beta * alpha_reward(s_w, alpha), beta * alpha_reward(s_l, alpha)
    per_pair = pair_loss(chosen_rewards - rejected_rewards - gamma, loss_type=loss_type,
                         label_smoothing=label_smoothing)
    loss = mean_loss(per_pair, batch)
    return loss, preference_metrics(loss, chosen_rewards, rejected_rewards, batch)


@register("preference_loss", "simpo", paper="SimPO: Simple Preference Optimization with a Reference-Free Reward",
          arxiv="2405.14734")
def simpo(chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, *, chosen_mask: torch.Tensor,
          rejected_mask: torch.Tensor, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0,
          loss_type: str = "sigmoid", length_normalize: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """SimPO loss ``mean −log σ(β(S̄_w − S̄_l) − γ)``; see the module docstring."""
    return reward_shape_loss(chosen_logprobs, rejected_logprobs, chosen_mask=chosen_mask,
                             rejected_mask=rejected_mask, beta=beta, gamma=gamma, alpha=0.0,
                             label_smoothing=label_smoothing, loss_type=loss_type,
                             length_normalize=length_normalize)
