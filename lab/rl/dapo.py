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
   until the batch is full: the sampler ``dynamic_sampling`` (:mod:`lab.sampling.dynamic_sampling`).
4. Overlong reward shaping, with L_max and the buffer L_cache: the soft overlong punishment added
   to R (``reward/overlong_penalty``, :mod:`lab.rewards.overlong`)::

       R_len(L) = 0                            if L ≤ L_max − L_cache
                = ((L_max − L_cache) − L)/L_cache   if L_max − L_cache < L ≤ L_max
                = −1                           if L > L_max

   or overlong filtering, truncated responses leave the loss (sampler ``overlong_filter``,
   :mod:`lab.sampling.overlong_filter`).

No KL term (β = 0). This module is the loss (1 and 2). All four parts run through the generic
switches of ``policy_optimization``::

    run("policy_optimization", task="reverse(difficulty=3, slack=3)", advantage="grpo", loss="dapo",
        group_filter="dynamic_sampling(max_rounds=4)",
        reward_shaping="overlong_penalty(cache_length=3)")      # or token_selector="overlong_filter"
"""
from __future__ import annotations

from typing import Any

import torch

from lab.registry import register
from lab.rl.core import GlobalNorm, clipped_policy_loss

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


__all__ = ["dapo"]
