"""GRPO: group-normalized advantages, no critic, PPO clipping, KL loss to a reference.

Paper: "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
Shao et al., arXiv 2402.03300.

The update: sample G responses per prompt; every token of response i gets the advantage
(``advantage/grpo``)::

    A_i = (R_i − mean_g R) / (std_g R + eps)

and the loss (``policy_loss/grpo``) is PPO's clipped surrogate averaged per response and then over
responses (``agg="seq_mean_token_mean"``), plus a KL penalty *in the loss* with the k3 estimator
computed from the current policy (the gradient flows through ℓ)::

    L = (1/G) Σ_i (1/|y_i|) Σ_t [ max(−ρ A_i, −clip(ρ, 1−ε, 1+ε) A_i) + β (π_ref/π − log(π_ref/π) − 1) ]

where R_i is the reward of response y_i, mean_g and std_g are taken over the G rewards of its
group g, |y_i| is its number of valid tokens, ρ = ρ_{i,t} = exp(ℓ_{i,t} − ℓ^old_{i,t}) the
importance ratio of token t (ℓ = log π_θ, ℓ^old the log-prob at sampling time), π_ref the frozen
reference policy, ε the clip range and β the KL weight. Intuition: the other answers to the same
prompt are the baseline a critic would otherwise have to learn, and dividing by their spread puts
every prompt on the same scale.

Where it departs from PPO: no value function (the group mean is the baseline), std normalization,
KL as a loss term instead of a reward penalty.

Choices (β = 0.04 and k3 are the paper's):
- ε = 0.2 on both sides (TRL/verl; the paper gives no value); ``clip_eps_low``/``clip_eps_high``
  decouple them, ``dual_clip`` adds the dual clip of ``lab.rl.core.clipped_surrogate``.
- std unbiased (Bessel) with eps = 1e-6 (verl); ``std="population"`` is available.
- A group whose rewards are all equal, and a group of one, gets A = 0 (only the KL term acts);
  ``frac_zero_std_groups`` reports them.

Both functions are thin: the group statistics are ``lab.rl.core.group_normalize``, the loss is
``lab.rl.core.clipped_policy_loss`` (ratio, clipping, KL estimators, masked aggregation, and the
tensor convention of DESIGN.md: (B, T) log-probs, (B,) or (B, T) advantages, a 0/1 mask).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.registry import register
from lab.rl.core import GlobalNorm, advantage_metrics, clipped_policy_loss, group_normalize

PAPER = "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models"


@register("advantage", "grpo", paper=PAPER, arxiv="2402.03300")
def grpo_advantages(rewards: torch.Tensor, *, group_size: int | None = None,
                    group_ids: torch.Tensor | None = None, std: str = "unbiased",
                    eps: float = 1e-6) -> tuple[torch.Tensor, dict[str, Any]]:
    """A_i = (R_i − mean_g R) / (std_g R + eps), (B,)."""
    advantages, stats = group_normalize(rewards, group_size=group_size, group_ids=group_ids, std=std, eps=eps)
    return advantages, advantage_metrics(advantages, stats=stats)


@register("policy_loss", "grpo", paper=PAPER, arxiv="2402.03300")
def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None,
              entropy: torch.Tensor | None = None, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
              dual_clip: float | None = None, beta: float = 0.04, kl_estimator: str = "k3",
              agg: str = "seq_mean_token_mean", norm: GlobalNorm | None = None,
              return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The shared clipped loss with GRPO's defaults (β = 0.04, k3, per-response token mean)."""
    return clipped_policy_loss(logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs,
                               entropy=entropy, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
                               dual_clip=dual_clip, beta=beta, kl_estimator=kl_estimator, agg=agg,
                               norm=norm, return_per_token=return_per_token)
