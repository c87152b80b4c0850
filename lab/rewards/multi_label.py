"""Multi-objective GRPO with a multi-label reward model: K reward heads combined into one scalar reward.

Paper: "Optimizing Safe and Aligned Language Generation: A Multi-Objective GRPO Approach", Li et al.,
arXiv 2503.21819.

The rule: one reward model regresses K alignment scores ŝ_k(x, y) (in the paper: politeness,
meaningfulness, actionability, safety); their weighted sum is the scalar reward handed to GRPO:

    sum_then_normalize   R_i = Σ_k w_k ŝ_{i,k}                                 (the paper's form)
    normalize_then_sum   R_i = Σ_k w_k (ŝ_{i,k} − mean_g ŝ_k) / (std_g ŝ_k + eps)

where i indexes the B responses, w_k the head weights, and mean_g / std_g are over the G responses
of response i's group (std unbiased). GRPO then normalizes R within each group. Intuition: the
second form keeps a head with a large scale from drowning the others (the option TRL calls
``multi_objective_aggregation="normalize_then_sum"``).

Where it departs from GRPO: only the reward; advantages and loss are GRPO's.

Choices (the paper's head weights and normalization are not public):
- Equal weights w_k = 1/K by default.
- ``sum_then_normalize`` by default; ``normalize_then_sum`` uses the unbiased group std plus
  ``eps`` = 1e-6.

Example: ŝ = [[0.9, 0.2], [0.5, 0.6]], w = (0.5, 0.5) → R = [0.55, 0.55], so a group of these two
gets GRPO advantages [0, 0]: the heads' disagreement cancels.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_choice, check_positive
from lab.registry import register
from lab.rl.core import group_normalize
from lab.rewards.multi_objective import check_objectives, weighted_sum

AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


@register("reward", "multi_label",
          paper="Optimizing Safe and Aligned Language Generation: A Multi-Objective GRPO Approach",
          arxiv="2503.21819", summary="Weighted sum of K reward-model heads as the GRPO reward")
def multi_label(rewards: torch.Tensor, *, weights: Any = None, aggregation: str = "sum_then_normalize",
                group_size: int | None = None, group_ids: torch.Tensor | None = None,
                eps: float = 1e-6) -> tuple[torch.Tensor, dict[str, Any]]:
    """Combine head scores ``rewards`` (B, K) into one reward (B,).

    Args:
        rewards: ŝ (B, K), one column per head.
        weights: w (K,) or (B, K); default 1/K each.
        aggregation: ``"sum_then_normalize"`` or ``"normalize_then_sum"`` (needs groups).
        group_size / group_ids: the groups (only for ``normalize_then_sum``).
        eps: added to each head's group std.
    """
    r = check_objectives(rewards)
    check_choice("aggregation", aggregation, AGGREGATIONS)
    check_positive("eps", eps, allow_zero=True)
    K = r.shape[1]
    w = torch.full((K,), 1.0 / K) if weights is None else weights
    if aggregation == "normalize_then_sum":
        r, _ = group_normalize(r, group_size=group_size, group_ids=group_ids, eps=eps)   # (B, K)
    combined = weighted_sum(r, w)                                                      # (B,)
    metrics = {f"multi_label/head{k}_mean": float(rewards[:, k].float().mean()) for k in range(K)}
    metrics["reward"] = float(combined.mean())
    return combined, metrics


__all__ = ["multi_label", "AGGREGATIONS"]
