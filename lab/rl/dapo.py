"""DAPO: GRPO made stable for long chains of thought (clip-higher and a token-level loss).

Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", Yu et al.,
arXiv 2503.14476.

The loss (``policy_loss/dapo``; advantages stay group-normalized, ``advantage/grpo``)::

    L = Σ_{i,t} m_{i,t} max(−ρ_{i,t} A_i, −clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_i) / Σ_{i,t} m_{i,t}

where m is the response mask (1 on the valid tokens of response i), ρ_{i,t} = exp(ℓ_{i,t} −
ℓ^old_{i,t}) the importance ratio of token t, A_i the advantage of response i, and ε_low = 0.2,
ε_high = 0.28. It holds two of DAPO's four changes to GRPO:

1. Clip-higher: decoupled clip range [1 − ε_low, 1 + ε_high] with ε_high > ε_low, so
   low-probability tokens with A > 0 can grow further (keeps entropy from collapsing).
2. Token-level loss: every token of the batch weighs the same (``agg="token_mean"``), so long
   responses are not down-weighted per token as in GRPO's per-response mean.

The other two run through the generic switches of ``policy_optimization``:

3. Dynamic sampling: drop groups whose rewards are all equal (A = 0, no gradient) and keep sampling
   until the batch is full: the sampler ``dynamic_sampling`` (:mod:`lab.sampling.dynamic_sampling`).
4. Overlong reward shaping, with L_max and the buffer L_cache: the soft overlong punishment added
   to R (``reward/overlong_penalty``, :mod:`lab.rewards.overlong`)::

       R_len(L) = 0                            if L ≤ L_max − L_cache
                = ((L_max − L_cache) − L)/L_cache   if L_max − L_cache < L ≤ L_max
                = −1                           if L > L_max

   or overlong filtering, truncated responses leave the loss (sampler ``overlong_filter``,
   :mod:`lab.sampling.overlong_filter`).

Intuition: let rare good tokens grow, and let every token of a long answer count as much as a token
of a short one.

Where it departs from GRPO: decoupled clip range with ε_high > ε_low, the batch token mean instead
of the per-response mean, no KL term (β = 0), plus dynamic sampling and overlong shaping in the loop.

Choices:
- The loss is ``lab.rl.core.clipped_policy_loss`` with ``agg="token_mean"``. With gradient
  accumulation the denominator Σ m must be the global token count: pass
  ``norm=GlobalNorm.of(full_mask)`` (without it each call divides by its own tokens).
- β = 0 by default (the paper drops the KL); ``beta > 0`` adds GRPO's k3 loss term.

Example (all four parts)::

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
