"""Overlong penalty: DAPO's soft punishment of responses that run into the token budget.

Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476, eq. 13
(the fourth of DAPO's changes to GRPO; the loss is ``policy_loss/dapo``, dynamic sampling the
sampler ``dynamic_sampling``, overlong filtering the sampler ``overlong_filter``).

The update: a response that runs into the generation budget is usually cut off, not finished;
scoring it like a finished one teaches the model that rambling is free. DAPO adds, to the task
reward R, a penalty that grows linearly over the last L_cache tokens before the budget L_max::

    R_len(L) = 0                                 if L ≤ L_max − L_cache
             = ((L_max − L_cache) − L) / L_cache  if L_max − L_cache < L ≤ L_max
             = −1                                if L > L_max
    R'_i     = R_i + factor · R_len(L_i)

with L_i the response length in tokens (``<eos>`` included). Example: L_max = 20480, L_cache = 4096:
lengths [16000, 18432, 20480, 20481] -> R_len = [0, −0.5, −1, −1].

Where it departs from GRPO: only the reward; the estimator and the loss are untouched. Because it
changes rewards, an otherwise all-correct group whose answers differ in length gets a non-zero
group spread (the spec's edge case).

Choices: where the public material is open,
- ``max_length`` defaults to the padded width of the batch, which the lab's rollouts make equal
  to the generation budget (``max_new_tokens``); pass it explicitly for other data.
- ``cache_length`` defaults to ⌈L_max / 5⌉, DAPO's ratio (4096 of 20480), at least 1 token.
- ``factor`` scales the penalty (verl's ``overlong_buffer.penalty_factor``, 1.0); the verl form
  ``min(−(L − (L_max − L_cache))/L_cache · factor, 0)`` equals the formula above for L ≤ L_max.
- ``rewards`` (B, K) with several columns get the penalty on every column.

In ``policy_optimization``: ``reward_shaping="overlong_penalty(cache_length=3)"`` (the task needs
room beyond its answers, e.g. ``task="reverse(difficulty=3, slack=3)"``).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lab.checks import check_int, check_positive, check_tensor
from lab.registry import register
from lab.rl.core import as_mask, check_rewards

PAPER = "DAPO: An Open-Source LLM Reinforcement Learning System at Scale"


def overlong_penalty(lengths: torch.Tensor, *, max_length: int, cache_length: int,
                     factor: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Soft overlong punishment R_len(L) (B,) in [−factor, 0], to add to the rewards."""
    check_tensor("lengths", lengths, ndim=1)
    check_int("max_length", max_length, minimum=1)
    check_int("cache_length", cache_length, minimum=1)
    check_positive("factor", factor, allow_zero=True)
    if cache_length > max_length:
        raise ValueError(f"cache_length ({cache_length}) must be <= max_length ({max_length})")
    if lengths.is_floating_point() and not torch.isfinite(lengths).all():
        raise ValueError("lengths contains NaN or Inf")
    lengths = lengths.double()
    if lengths.numel() and lengths.min() < 0:
        raise ValueError("lengths must be >= 0")
    start = max_length - cache_length
    # linear ramp from 0 at L_max − L_cache down to −1 at L_max; −1 beyond
    penalty = ((start - lengths) / cache_length).clamp(-1.0, 0.0)
    penalty = torch.where(lengths > max_length, torch.full_like(penalty, -1.0), penalty) * factor
    n = max(lengths.numel(), 1)
    return penalty.float(), {"overlong/frac": float((lengths > start).sum()) / n,
                             "overlong/penalty_mean": float(penalty.sum()) / n}


@register("reward", "overlong_penalty", paper=PAPER, arxiv="2503.14476",
          summary="DAPO's soft overlong punishment: R + factor·R_len(L), a ramp over the last L_cache tokens")
def overlong_reward(rewards: torch.Tensor, *, lengths: torch.Tensor | None = None,
                    mask: torch.Tensor | None = None, max_length: int | None = None,
                    cache_length: int | None = None, factor: float = 1.0
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    """``R' = R + factor·R_len(L)`` (B,) or (B, K).

    Args:
        rewards: (B,) or (B, K) task rewards.
        lengths: (B,) response lengths; default: the mask's row sums.
        mask: (B, T) response tokens (for the lengths and the default budget T).
        max_length: L_max; default the mask's width T (the rollout's budget).
        cache_length: L_cache; default ⌈L_max / 5⌉.
        factor: scale of the penalty (1.0).

    Metrics: ``overlong/frac`` (share of responses in the penalty zone), ``overlong/penalty_mean``.
    """
    rewards = check_rewards(rewards)
    if mask is not None:
        mask = as_mask(mask)
        if mask.dim() != 2 or mask.shape[0] != rewards.shape[0]:
            raise ValueError(f"mask must have shape ({rewards.shape[0]}, T), got {tuple(mask.shape)}")
    if lengths is None:
        if mask is None:
            raise ValueError("overlong_penalty needs lengths (B,) or the mask (B, T)")
        lengths = mask.sum(-1)
    check_tensor("lengths", lengths, shape=(rewards.shape[0],))
    if max_length is None:
        if mask is None:
            raise ValueError("overlong_penalty needs max_length, or the mask whose width is the budget")
        max_length = int(mask.shape[1])
    check_int("max_length", max_length, minimum=1)
    if cache_length is None:
        cache_length = max(1, math.ceil(max_length / 5))
    penalty, metrics = overlong_penalty(lengths, max_length=max_length, cache_length=cache_length,
                                        factor=factor)
    penalty = penalty.to(device=rewards.device, dtype=rewards.dtype)
    shaped = rewards + (penalty if rewards.dim() == 1 else penalty[:, None])
    return shaped, metrics


__all__ = ["overlong_penalty", "overlong_reward"]
