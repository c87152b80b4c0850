"""REINFORCE and REINFORCE with a baseline: the plain policy gradient.

Paper: "Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement Learning",
Williams, 1992 (Machine Learning 8; no arXiv id). The whitened baseline: REINFORCE++, arXiv
2501.03262.

The update (``policy_loss/reinforce``), with A the (detached) advantage of each response or token::

    L = −agg( sg[w_{i,t}] · sg[A_{i,t}] · ℓ_{i,t} ),      ∇L = −E[A ∇ log π(y|x)]

where ℓ_{i,t} = log π_θ(y_{i,t} | x, y_{i,<t}) is the log-prob of token t of response i, sg stops
the gradient, agg reduces over the valid tokens (default ``seq_mean_token_sum``:
L = −(1/B') Σ_i A_i Σ_t ℓ_{i,t} with B' the non-empty responses, the score-function gradient of the
sequence reward), and w = min(exp(ℓ − ℓ^old), is_cap) is an optional truncated importance weight
for updates on stale samples (ℓ^old the sampling log-probs). Intuition: raise the log-probability
of what scored above the baseline, lower what scored below, in proportion to the gap.

Baseline (``advantage/reinforce_baseline``): ``A_i = R_i − b_i`` with R_i the reward of response i
and ``b_i`` the mean reward of its group (``baseline="group_mean"``, default), of the whole batch
(``"batch_mean"``), or ``b = 0`` (``"none"``: plain REINFORCE with the raw rewards). Any baseline
that does not depend on the sampled response leaves the gradient unbiased and lowers its variance.

Where it departs from PPO: it is the parent of the whole family (PPO, GRPO, RLOO, ... add ratios,
clipping, critics or group statistics to it): no ratio clipping, no critic, no trust region.

Choices:
- ``agg="seq_mean_token_sum"`` by default (the sequence-level estimator); any mode of
  ``lab.rl.core.aggregate`` can be passed.
- The importance weight is off by default (pure on-policy REINFORCE); with ``is_cap`` it is
  min(π/π_old, is_cap), detached, with the log-ratio clamped at 20 before the exp.
- An optional KL loss term ``β·agg(KL_est(ℓ, ℓ^ref))`` (``lab.rl.core.kl_penalty``, β = 0 by
  default, k3), shared with the PPO family.
- ``whiten=True`` normalizes A over all valid tokens of the batch, ``(A − mean)/sqrt(var + 1e-8)``
  with the unbiased variance (``lab.rl.core.masked_whiten``, REINFORCE++-baseline), which returns
  per-token advantages (B, T) and needs the mask (ValueError without it).
- Singleton groups get A = 0 under ``group_mean`` (verl keeps A = R there).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_choice, check_positive
from lab.registry import register
from lab.rl.core import (
    kl_penalty,
    GlobalNorm, advantage_metrics, aggregate, as_mask, check_rewards,
    expand_advantages, group_stats, masked_whiten, policy_metrics, prepare_policy_inputs,
)

BASELINES = ("group_mean", "batch_mean", "none")


@register("advantage", "reinforce_baseline", paper="Simple Statistical Gradient-Following Algorithms for "
          "Connectionist Reinforcement Learning")
def reinforce_baseline(rewards: torch.Tensor, *, group_size: int | None = None,
                       group_ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       baseline: str = "group_mean", whiten: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """A = R − b (b: group mean, batch mean or 0); optionally whitened over valid tokens."""
    rewards = check_rewards(rewards)
    check_choice("baseline", baseline, BASELINES)
    if mask is not None:                                  # validated even when only whiten reads it
        m = as_mask(mask)
        if m.dim() != 2 or m.shape[0] != rewards.shape[0]:
            raise ValueError(f"mask must have shape ({rewards.shape[0]}, T), got {tuple(m.shape)}")
    stats = None
    if group_size is not None or group_ids is not None:
        stats = group_stats(rewards, group_size=group_size, group_ids=group_ids)
    if baseline == "group_mean":
        if stats is None:
            raise ValueError("baseline='group_mean' needs group_size or group_ids")
        advantages = rewards - stats.mean                                        # (B,)
    elif baseline == "batch_mean":
        advantages = rewards - rewards.mean()
    else:
        advantages = rewards.clone()
    if whiten:
        if mask is None:
            raise ValueError("whiten=True needs the token mask")
        m = as_mask(mask).bool()
        advantages = masked_whiten(expand_advantages(advantages, m), m)          # (B, T)
    return advantages, advantage_metrics(advantages, mask if whiten else None, stats)


@register("policy_loss", "reinforce", paper="Simple Statistical Gradient-Following Algorithms for "
          "Connectionist Reinforcement Learning")
def reinforce(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None,
              entropy: torch.Tensor | None = None, beta: float = 0.0, kl_estimator: str = "k3",
              is_cap: float | None = None, agg: str = "seq_mean_token_sum", norm: GlobalNorm | None = None,
              return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """L = −agg(w · A · ℓ) (+ β·agg(KL)); see the module docstring."""
    logprobs, mask_f, advantages, old_logprobs = prepare_policy_inputs(logprobs, old_logprobs, advantages, mask)
    check_positive("beta", beta, allow_zero=True)
    adv = expand_advantages(advantages, mask_f)                                  # (B, T)
    per_token = -adv * logprobs
    if is_cap is not None:
        check_positive("is_cap", is_cap)
        # w = min(π/π_old, C), detached: corrects (and bounds) updates on stale samples
        weight = torch.exp((logprobs - old_logprobs).clamp(max=20.0)).clamp(max=is_cap).detach()
        per_token = per_token * weight
    pg_loss = aggregate(per_token, mask_f, agg, norm)
    loss, per_token, kl_values = kl_penalty(per_token, pg_loss, logprobs, ref_logprobs, mask_f,
                                            beta=beta, kl_estimator=kl_estimator, agg=agg, norm=norm)
    metrics = policy_metrics(mask_f, loss=loss, pg_loss=pg_loss, advantages=adv, logprobs=logprobs,
                             old_logprobs=old_logprobs, kl=kl_values, entropy=entropy)
    if return_per_token:
        metrics["per_token_loss"] = per_token.detach()
    return loss, metrics
