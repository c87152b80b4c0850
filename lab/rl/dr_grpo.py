"""Dr. GRPO: GRPO without its two normalization biases.

Paper: "Understanding R1-Zero-Like Training: A Critical Perspective", Liu et al., arXiv 2503.20783.

The update: GRPO divides each advantage by the group's reward std (prompts that are nearly always
solved or nearly always failed get blown-up advantages: a question-difficulty bias) and each
response's loss by its own length |y_i| (a short wrong answer is punished more per token than a
long wrong one: a length bias that lets wrong answers grow). Dr. GRPO removes both::

    A_i = R_i − mean_g R                                                       (``advantage/dr_grpo``)
    L   = Σ_{i,t} m_{i,t} max(−ρ A_i, −clip(ρ, 1−ε, 1+ε) A_i) / (B · C)       (agg "seq_mean_token_sum_norm")

where R_i is the reward of response i, mean_g the mean over its group, m the response mask,
ρ = exp(ℓ − ℓ^old) the per-token importance ratio, ε = 0.2, B the number of rows of the batch and
C a constant, the maximum response length. Intuition: every token of every response gets the same
weight 1/(B·C), whatever the prompt's difficulty or the response's length.

Where it departs from GRPO: no division by the std, no division by |y_i| (a constant instead), and
β = 0 as in the paper. With std = 1 and every |y_i| = C it equals GRPO.

Choices:
- C is ``norm_const``; by default the padded width T of the batch (``lab.rl.core.aggregate``), and
  a ``norm_const`` smaller than T raises ValueError. Under gradient accumulation pass
  ``norm=GlobalNorm.of(full_mask)`` (or ``norm_const=C``) so B and C are the full batch's.
- B counts every row, empty ones included. Peers scale differently: verl divides by C only,
  TRL by B_local·C.
- β = 0 by default; ``beta > 0`` adds a k3 KL loss term as GRPO's.

The advantage is ``lab.rl.core.group_normalize(std="none")`` (all-equal and singleton groups give
A = 0), the loss ``lab.rl.core.clipped_policy_loss``.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.registry import register
from lab.rl.core import GlobalNorm, advantage_metrics, clipped_policy_loss, group_normalize

PAPER = "Understanding R1-Zero-Like Training: A Critical Perspective"


@register("advantage", "dr_grpo", paper=PAPER, arxiv="2503.20783")
def dr_grpo_advantages(rewards: torch.Tensor, *, group_size: int | None = None,
                       group_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """A_i = R_i − mean_g R, (B,)."""
    advantages, stats = group_normalize(rewards, group_size=group_size, group_ids=group_ids, std="none")
    return advantages, advantage_metrics(advantages, stats=stats)


@register("policy_loss", "dr_grpo", paper=PAPER, arxiv="2503.20783")
def dr_grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
                 mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None,
                 entropy: torch.Tensor | None = None, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
                 beta: float = 0.0, kl_estimator: str = "k3", norm_const: float | None = None,
                 norm: GlobalNorm | None = None,
                 return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The shared clipped loss summed over tokens and divided by B·C (C = ``norm_const`` or T)."""
    if norm_const is not None:
        if norm_const < logprobs.shape[-1]:
            raise ValueError(f"norm_const (C = {norm_const}) must be >= the response width {logprobs.shape[-1]}")
        norm = GlobalNorm(*(norm.num_tokens, norm.num_seqs, norm.num_rows) if norm else (None,) * 3,
                          norm_const=norm_const)
    return clipped_policy_loss(logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs,
                               entropy=entropy, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
                               beta=beta, kl_estimator=kl_estimator, agg="seq_mean_token_sum_norm",
                               norm=norm, return_per_token=return_per_token)
