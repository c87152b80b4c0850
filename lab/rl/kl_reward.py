"""The KL penalty in the reward (RLHF-PPO's way to stay near the reference policy).

"Fine-Tuning Language Models from Human Preferences" (Ziegler et al.), arXiv 1909.08593, and the
InstructGPT paper, arXiv 2203.02155. Per response token, with Δ_{i,t} = ℓ^old_{i,t} − ℓ^ref_{i,t}
on the sampled tokens (detached)::

    r_{i,t} ← r_{i,t} − β · KL_{i,t},      KL ∈ {k1 = Δ, k2 = Δ²/2, k3 = e^{−Δ} − 1 + Δ}

where ``r`` are the ``token_rewards`` (the outcome reward R_i on the last valid token). Summed over a
response this is R_i − β Σ_t KL_{i,t}, the sequence-level penalty of TRL's RLOO. Lab defaults as
TRL's PPO: β = 0.05, k1.

Why the penalty goes into the *reward* for PPO and not into the loss as ``β·agg(k1)``: on-policy
E_π[∇ℓ] = 0, so a k1 *loss* term has zero expected gradient and restrains nothing, while a reward
term is credited through the advantages like any other reward and its policy gradient is the
gradient of −β·KL(π‖π_ref) (the same fact that makes GRPO use k3 as a loss term).

Shape: unlike the sequence-level reward functions of Part F.2 this one maps per-token rewards to
per-token rewards (B, T); :func:`lab.experiments.policy_optimization` then sets
``rewards = Σ_t token_rewards`` so the two views of the batch stay equal.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_positive, check_tensor
from lab.registry import register
from lab.rl.core import as_mask, check_detached, check_per_token, kl, masked_mean


@register("reward", "kl_penalty", paper="Fine-Tuning Language Models from Human Preferences",
          arxiv="1909.08593")
def kl_reward_penalty(token_rewards: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, *, beta: float = 0.05, kl_estimator: str = "k1",
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
    """``token_rewards − β·KL(ℓ^old, ℓ^ref)`` on valid tokens (B, T); padding stays 0.

    Metrics: ``kl_reward/kl`` (mean per-token KL estimate), ``kl_reward/penalty`` (mean per-response
    penalty β Σ_t KL) and ``kl_reward/beta``.
    """
    check_positive("beta", beta, allow_zero=True)
    check_tensor("token_rewards", token_rewards, ndim=2, finite=True, dtype_kind="float")
    shape = tuple(token_rewards.shape)
    token_rewards = check_per_token("token_rewards", token_rewards, shape)
    old_logprobs = check_per_token("old_logprobs", old_logprobs, shape)
    ref_logprobs = check_per_token("ref_logprobs", ref_logprobs, shape)
    check_detached("old_logprobs", old_logprobs)
    check_detached("ref_logprobs", ref_logprobs)
    m = as_mask(mask, token_rewards)
    kl_values = kl(old_logprobs.to(token_rewards.dtype), ref_logprobs.to(token_rewards.dtype), kl_estimator) * m
    shaped = (token_rewards - beta * kl_values) * m
    metrics = {"kl_reward/kl": float(masked_mean(kl_values, m)),
               "kl_reward/penalty": float(beta * kl_values.sum(-1).mean()) if shape[0] else 0.0,
               "kl_reward/beta": float(beta)}
    return shaped, metrics


__all__ = ["kl_reward_penalty"]
