"""RLOO: REINFORCE with a leave-one-out baseline.

Paper: "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
LLMs", Ahmadian et al., arXiv 2402.14740.

The estimator: each of the G responses of a prompt is compared with the mean reward of the *other*
G − 1::

    A_i = R_i − (1/(G−1)) Σ_{j∈g(i), j≠i} R_j  =  G/(G−1) · (R_i − mean_g R)

where R_i is the reward of response i, g(i) its group of G responses and mean_g R their mean
reward. Intuition: the baseline does not depend on y_i, so the gradient stays unbiased, and
unlike the group mean it does not include R_i itself (the group-mean advantage is the RLOO one
shrunk by (G−1)/G).

Where it departs from REINFORCE with a group-mean baseline: the baseline leaves the response out,
which rescales the advantage by G/(G−1); from GRPO: no std normalization and no clipped ratio in
the paper's loss. Pair it with ``policy_loss/reinforce`` (the paper) or a clipped loss (TRL's
RLOOTrainer).

Choices:
- Groups of one have no other sample: A = 0 (TRL turns the 0/0 into 0; verl keeps A = R). A group
  whose rewards are all equal also gets A = 0.
- ``whiten=True`` then normalizes A over the responses of the batch,
  ``(A − mean)/sqrt(var_unbiased + 1e-8)`` (``lab.rl.core.masked_whiten``); off by default.
- Groups come from ``lab.rl.core.group_stats`` (``group_size`` or any-order ``group_ids``).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.registry import register
from lab.rl.core import advantage_metrics, check_rewards, group_stats, masked_whiten


@register("advantage", "rloo", paper="Back to Basics: Revisiting REINFORCE Style Optimization for "
          "Learning from Human Feedback in LLMs", arxiv="2402.14740")
def rloo(rewards: torch.Tensor, *, group_size: int | None = None, group_ids: torch.Tensor | None = None,
         whiten: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """A_i = G/(G−1)·(R_i − mean_g R) per group (0 for singleton groups)."""
    rewards = check_rewards(rewards)
    stats = group_stats(rewards, group_size=group_size, group_ids=group_ids)
    # G/(G−1) with G = group count; singleton groups: R − mean = 0 already, keep the factor finite
    scale = stats.count / (stats.count - 1.0).clamp_min(1.0)
    advantages = scale * (rewards - stats.mean)                                  # (B,)
    if whiten:
        advantages = masked_whiten(advantages, torch.ones_like(advantages, dtype=torch.bool))
    return advantages, advantage_metrics(advantages, stats=stats)
