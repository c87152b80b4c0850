"""CANON: conditional advantages from regrouping each group by a metric (entropy or length).

Paper: "Conditional Advantage Estimation for Reinforcement Learning in Large Reasoning Models",
Chen et al., arXiv 2509.23962 (public code: biuboomc/CANON, a verl fork).

The estimator: entropy or response length correlate with how a model reasons, but whether
*higher* or *lower* is better depends on the task. CANON does not presume a direction: it sorts
the G responses of a prompt by a metric and splits them into a lower half G⁻ and a higher half
G⁺, then

    A^inter_o = R_o − mean(R_{G⁺})          if o ∈ G⁻     (compare with the *other* trend:
    A^inter_o = R_o − mean(R_{G⁻})          if o ∈ G⁺      which direction of the metric wins?)
    A^intra_o = R_o − mean(R_{own half})                   (which response wins within a trend?)
    A_o = μ·A^inter_o + (1 − μ)·A^intra_o                  (no std normalization)

where R_o is the reward of response o, G⁻ and G⁺ the halves of its group and μ ∈ [0, 1] (``mu``)
the weight of the inter-group signal (1: CANON-Inter, 0: CANON-Intra; the default μ = 1 is the
paper's math setting).

If the high-entropy half is the more successful one, A^inter lifts every high-entropy response and
lowers every low-entropy one: the metric's useful direction is amplified without being named.
With equal halves, ½A^inter + ½A^intra = R_o − mean_g R, i.e. μ = 0.5 is exactly Dr. GRPO.

CANON-Eff (a length metric, α ≤ 1 favours the shorter half): A^inter_o = R_o − α·mean(R_{G⁺}) for
o ∈ G⁻ and α·R_o − mean(R_{G⁻}) for o ∈ G⁺. CANON-Dynamic ("first inter, later intra"):
μ switches to 1 − μ at ``switch_step``.

Example: R = [1, 1, 0, 1], entropy = [0.1, 0.2, 0.9, 0.8] -> G⁻ = {1, 2} (mean 1), G⁺ = {3, 4}
(mean 0.5): A^inter = [0.5, 0.5, −1, 0], A^intra = [0, 0, −0.5, 0.5]; μ = 0.5 gives
[0.25, 0.25, −0.75, 0.25] = R − 0.75 (Dr. GRPO).

Where it departs from GRPO: the baseline of a response is the mean reward of a half-group chosen
by the metric (inter: the other half, intra: its own half) instead of the whole group; no
division by the std (as Dr. GRPO). The paper trains with a token-level Dr. GRPO loss with
clip-higher: use ``policy_loss/dr_grpo`` or ``dapo``.

Choices where the public material is ambiguous (the public code settles the first two):
- Split: stable ascending sort by the metric, the lower half G⁻ gets ⌊G/2⌋ responses (so for odd
  G the higher half is one larger); ties keep the original order.
- The code divides the advantage by a constant (``max_length``): here that constant belongs to the
  loss aggregation (``seq_mean_token_sum_norm``), not to the estimator.
- Default metric: the masked mean token entropy of each response (``by="entropy"``, the paper's
  main variant); ``by="length"`` uses the response length; an explicit ``metric`` (B,) wins.
- Singleton groups (and any response whose other half is empty) get A = 0.
- CANON-Dynamic's switch point is a free parameter (``switch_step``; None = never switch).

Shared pieces: the groups are ``lab.rl.core.group_index`` / ``group_stats``, the default entropy
metric is ``lab.rl.core.masked_mean`` of the token entropies.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_choice, check_int, check_number, check_range, check_tensor
from lab.registry import register
from lab.rl.core import (advantage_metrics, as_mask, check_per_token, check_rewards, group_index, group_stats,
                         masked_mean)

PAPER = "Conditional Advantage Estimation for Reinforcement Learning in Large Reasoning Models"
METRICS: tuple[str, ...] = ("entropy", "length")


def response_metric(*, by: str = "entropy", mask: torch.Tensor | None = None,
                    entropy: torch.Tensor | None = None) -> torch.Tensor:
    """The per-response regrouping metric (B,): mean token entropy or length."""
    check_choice("by", by, METRICS)
    if mask is None:
        raise ValueError(f"CANON with by={by!r} needs mask (B, T); or pass metric (B,) directly")
    if by == "length":
        return as_mask(mask).sum(-1)
    if entropy is None:
        raise ValueError("CANON with by='entropy' needs entropy (B, T); or pass metric (B,) directly")
    m = as_mask(mask, entropy)
    return masked_mean(check_per_token("entropy", entropy.detach(), tuple(m.shape), m), m, dim=-1)


def split_halves(metric: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True for the higher-metric half G⁺ of each group (stable sort, |G⁻| = ⌊G/2⌋)."""
    order = torch.argsort(metric, stable=True)
    order = order[torch.argsort(index[order], stable=True)]                    # by group, then metric
    sorted_groups = index[order]
    counts = torch.bincount(index)
    starts = torch.cumsum(counts, 0) - counts                                   # first slot of each group
    rank = torch.arange(metric.shape[0], device=metric.device) - starts[sorted_groups]               # rank within the group
    high = torch.empty_like(index, dtype=torch.bool)
    high[order] = rank >= counts[sorted_groups] // 2
    return high


@register("advantage", "canon", paper=PAPER, arxiv="2509.23962",
          summary="Inter/intra half-group advantages after regrouping by entropy or length")
def canon_advantages(rewards: torch.Tensor, *, group_size: int | None = None,
                     group_ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                     metric: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                     by: str = "entropy", mu: float = 1.0, alpha: float = 1.0,
                     step: int | None = None, switch_step: int | None = None
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    """CANON advantages ``μ·A^inter + (1 − μ)·A^intra``.

    Args:
        rewards: (B,) outcome rewards.
        group_size, group_ids: the groups (exactly one of them).
        mask: (B, T) response mask (for ``by`` and the metrics).
        metric: (B,) the regrouping metric; if None it is computed as ``by`` says.
        entropy: (B, T) token entropies, for ``by="entropy"``.
        by: ``"entropy"`` (mean token entropy) or ``"length"`` (response length).
        mu: μ, weight of the inter-group advantage (1: CANON-Inter, 0: CANON-Intra, 0.5: Dr. GRPO).
        alpha: α of CANON-Eff (≤ 1 favours the lower-metric half; 1 = plain CANON).
        step, switch_step: CANON-Dynamic; from ``step >= switch_step`` on, μ becomes 1 − μ.

    Returns:
        ``(advantages (B,), metrics)`` with ``canon/inter_gap`` = mean over responses of their group's
        mean(R_{G⁺}) − mean(R_{G⁻}) (> 0: the higher-metric half wins) and ``canon/mu``.
    """
    rewards = check_rewards(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    mu = check_range("mu", mu, 0.0, 1.0)
    alpha = check_number("alpha", alpha)
    if switch_step is not None:
        check_int("switch_step", switch_step, minimum=0)
        if step is not None and check_int("step", step, minimum=0) >= switch_step:
            mu = 1.0 - mu
    if metric is None:
        metric = response_metric(by=by, mask=mask, entropy=entropy)
    check_tensor("metric", metric, shape=(rewards.shape[0],), finite=True)
    index, _ = group_index(rewards.shape[0], group_size=group_size, group_ids=group_ids,
                           device=rewards.device)
    high = split_halves(metric.detach().to(rewards.dtype), index)               # (B,) o ∈ G⁺
    group = group_stats(rewards, group_ids=index, std="none")                   # whole group
    own = group_stats(rewards, group_ids=index * 2 + high.long(), std="none")   # own half
    # mean of the other half = (Σ_group R − Σ_own R) / (n_group − n_own)
    other_count = group.count - own.count
    other_mean = (group.mean * group.count - own.mean * own.count) / other_count.clamp_min(1.0)
    # A^inter: o ∈ G⁻: R − α·mean(G⁺);  o ∈ G⁺: α·R − mean(G⁻)
    inter = torch.where(high, alpha * rewards - other_mean, rewards - alpha * other_mean)
    intra = rewards - own.mean
    advantages = mu * inter + (1.0 - mu) * intra                                # (B,)
    advantages = torch.where(other_count > 0, advantages, torch.zeros_like(advantages))
    metrics = advantage_metrics(advantages, mask, group)
    gap = torch.where(high, own.mean - other_mean, other_mean - own.mean)      # mean(G⁺) − mean(G⁻)
    metrics["canon/inter_gap"] = float(masked_mean(gap, other_count > 0))
    metrics["canon/mu"] = mu
    return advantages.detach(), metrics


__all__ = ["METRICS", "canon_advantages", "response_metric", "split_halves"]
