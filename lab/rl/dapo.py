"""DAPO: GRPO made stable for long chains of thought.

"DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476.

Four changes to GRPO (advantages stay group-normalized, ``advantage/grpo``):

1. Clip-higher: decoupled clip range [1 − ε_low, 1 + ε_high] with ε_high = 0.28 > ε_low = 0.2, so
   low-probability tokens with A > 0 can grow further (keeps entropy from collapsing).
2. Token-level loss: every token of the batch weighs the same,
   ``L = Σ_{i,t} m max(−ρA, −clip(ρ)A) / Σ_{i,t} m`` (``agg="token_mean"``; with gradient
   accumulation the denominator is the global token count, ``norm=GlobalNorm.of(full_mask)``), so
   long responses are not down-weighted per token as in GRPO's per-response mean.
3. Dynamic sampling: drop groups whose rewards are all equal (A = 0, no gradient) and keep sampling
   until the batch is full: :func:`dynamic_sampling_filter` gives the keep mask.
4. Soft overlong punishment (a reward added to R), with L_max and the buffer L_cache
   (:func:`overlong_penalty`)::

       R_len(L) = 0                            if L ≤ L_max − L_cache
                = ((L_max − L_cache) − L)/L_cache   if L_max − L_cache < L ≤ L_max
                = −1                           if L > L_max

No KL term (β = 0).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_positive, check_tensor
from lab.registry import register
from lab.rl.core import GlobalNorm, check_rewards, clipped_policy_loss, group_stats

PAPER = "DAPO: An Open-Source LLM Reinforcement Learning System at Scale"


@register("policy_loss", "dapo", paper=PAPER, arxiv="2503.14476")
def dapo(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
         mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
         clip_eps_low: float = 0.2, clip_eps_high: float = 0.28, beta: float = 0.0, kl_estimator: str = "k3",
         norm: GlobalNorm | None = None, return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The shared clipped loss with clip-higher and the batch token mean."""
    return clipped_policy_loss(logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs,
                               entropy=entropy, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
                               beta=beta, kl_estimator=kl_estimator, agg="token_mean", norm=norm,
                               return_per_token=return_per_token)


def overlong_penalty(lengths: torch.Tensor, *, max_length: int, cache_length: int,
                     factor: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Soft overlong punishment R_len(L) (B,) in [−factor, 0], to add to the rewards."""
    check_tensor("lengths", lengths, ndim=1)
    check_int("max_length", max_length, minimum=1)
    check_int("cache_length", cache_length, minimum=1)
    check_positive("factor", factor, allow_zero=True)
    if cache_length > max_length:
        raise ValueError(f"cache_length ({cache_length}) must be <= max_length ({max_length})")
    lengths = lengths.double()
    start = max_length - cache_length
    # linear ramp from 0 at L_max − L_cache down to −1 at L_max; −1 beyond
    penalty = ((start - lengths) / cache_length).clamp(-1.0, 0.0)
    penalty = torch.where(lengths > max_length, torch.full_like(penalty, -1.0), penalty) * factor
    return penalty.float(), {"overlong_frac": float((lengths > start).float().mean()),
                             "overlong_penalty_mean": float(penalty.mean())}


def dynamic_sampling_filter(rewards: torch.Tensor, *, group_size: int | None = None,
                            group_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Keep mask (B,) bool: True for responses whose group has at least two distinct rewards.

    DAPO samples more groups until ``train_batch_size`` prompts survive; a caller should cap the
    number of extra generation rounds (every group may be solved or failed).
    """
    rewards = check_rewards(rewards)
    stats = group_stats(rewards, group_size=group_size, group_ids=group_ids)
    keep = ~stats.zero_std[stats.index]
    return keep, {"kept_groups": float((~stats.zero_std).sum()), "n_groups": float(stats.n_groups),
                  "frac_zero_std_groups": float(stats.zero_std.float().mean())}
