"""NGRPO: advantage calibration with a virtual maximum-reward sample, and asymmetric clipping.

Paper: "NGRPO: Negative-enhanced Group Relative Policy Optimization", arXiv 2509.18851
(reference code: nangongrui-ngr/NGRPO, ``compute_ngrpo_outcome_advantage``).

GRPO gives a group whose G answers are all wrong the advantage (0 − 0)/(0 + eps) = 0: the prompt
the model needs most teaches it nothing. NGRPO pretends that the group also holds K virtual
answers with the maximum reward R_max. Only their rewards enter the statistics; they are never
trained on. With R_g the rewards of group g and R_g' = R_g ∪ {R_max}^K,

    μ'_g = mean(R_g'),   σ'_g = std_unbiased(R_g'),   A_i = (R_i − μ'_g) / (σ'_g + eps)   (real i only)

so an all-wrong group now gets A_i < 0 on every answer (push them all down), a mixed group keeps a
GRPO-like signal shifted downwards, and an all-correct group (every R_i = R_max) still gets 0.
The loss is PPO-clip with an asymmetric range: ε_high = 0.24 (loose, binds when A > 0) and
ε_low = 0.16 (tight, binds when A < 0), so the extra negative pressure of the calibration moves
the policy less per step than the positive signal. Aggregation is ``token_mean``, no KL.

    L = Σ_{i,t} m·max(−ρA, −clip(ρ, 1−ε_low, 1+ε_high)A) / Σ_{i,t} m,    ρ = exp(ℓ − ℓ^old)

Example: rewards [1, 0, 0, 1] -> μ' = 0.6, σ' = 0.5477, A = [0.7303, −1.0954, −1.0954, 0.7303];
[0, 0, 0, 0] -> A = −0.4472 each; [1, 1, 1, 1] -> 0.

A caveat worth seeing on a toy: on an all-wrong group every answer gets the same A < 0, so the
update is −|A|·Σ_i ∇log π(y_i). For answers sampled from π itself E[∇log π(y)] = 0: the push is
zero-mean — it lowers what was tried and raises what was not, but does not move the policy in
expectation. It has a direction only when sampling differs from π (temperature < 1, top-p, a
finite vocabulary of answers the model keeps repeating). On the lab's tabular toys NGRPO therefore
learns from every batch (GRPO's gradient is exactly 0 on all-wrong batches) without learning faster.

Where it departs from GRPO: the group statistics include K virtual R_max samples (K = 0 is GRPO
exactly), and the clip range is asymmetric (GRPO: ε = 0.2 both sides) with ``token_mean``
aggregation (GRPO paper: ``seq_mean_token_mean``).

Choices where the public material is ambiguous:
- Rewards above R_max would flip the calibration (the virtual sample would no longer be the best
  answer): they raise ValueError.
- Singleton groups: the reference code sets μ = 0, σ = 1 (A = R); the lab computes the statistics
  of the augmented group {R_i, R_max × K}, which is well defined for K ≥ 1, and gives A = 0 for
  K = 0 (the package rule for singleton groups).
- The training script filters all-correct groups out of the batch; here their advantage is
  exactly 0, so they add nothing to the loss but stay in the ``token_mean`` denominator unless the
  caller drops them (``frac_zero_std_groups`` reports how many there are).
- Std: unbiased (Bessel) as the reference code; ``std="population"`` is offered for comparison.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_number, check_positive
from lab.registry import register
from lab.rl.core import (
    GlobalNorm, advantage_metrics, check_rewards, clipped_policy_loss, group_index, group_stats,
)

PAPER = "NGRPO: Negative-enhanced Group Relative Policy Optimization"


@register("advantage", "ngrpo", paper=PAPER, arxiv="2509.18851",
          summary="GRPO advantages with K virtual maximum-reward samples in the group statistics")
def ngrpo_advantages(rewards: torch.Tensor, *, group_size: int | None = None,
                     group_ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                     r_max: float = 1.0, n_virtual: int = 1, std: str = "unbiased",
                     eps: float = 1e-6) -> tuple[torch.Tensor, dict[str, Any]]:
    """Calibrated advantages ``A_i = (R_i − μ'_g)/(σ'_g + eps)`` over ``R_g ∪ {R_max}^K``.

    Args:
        rewards: (B,) outcome rewards, each ≤ ``r_max``.
        group_size, group_ids: the groups (exactly one of them).
        mask: (B, T) response mask, only used for the metrics (per-token statistics).
        r_max: R_max, the reward of the virtual samples (the task's maximum reward).
        n_virtual: K, how many virtual samples join each group (K = 0 is GRPO).
        std: ``"unbiased"`` (reference code) or ``"population"`` std of the augmented group.
        eps: added to the std.

    Returns:
        ``(advantages (B,), metrics)`` with ``ngrpo/frac_calibrated_groups``: share of groups
        whose rewards are all equal (GRPO advantage 0) that now carry a non-zero advantage.
    """
    rewards = check_rewards(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    r_max = check_number("r_max", r_max)
    n_virtual = check_int("n_virtual", n_virtual, minimum=0)
    check_positive("eps", eps, allow_zero=True)
    if (rewards > r_max).any():
        raise ValueError(f"rewards must be <= r_max = {r_max} (the virtual sample must be the best "
                         f"answer); got max reward {rewards.max().item()}")
    index, n_groups = group_index(rewards.shape[0], group_size=group_size, group_ids=group_ids,
                                  device=rewards.device)
    # augmented groups: the B real rewards followed by K virtual R_max per group
    virtual_ids = torch.arange(n_groups, device=rewards.device).repeat_interleave(n_virtual)           # (n_groups·K,)
    augmented = torch.cat([rewards, torch.full(virtual_ids.shape, r_max, dtype=rewards.dtype, device=rewards.device)])
    stats = group_stats(augmented, group_ids=torch.cat([index, virtual_ids]), std=std)
    n = rewards.shape[0]
    # A_i = (R_i − μ'_g) / (σ'_g + eps), real samples only
    advantages = (rewards - stats.mean[:n]) / (stats.std[:n] + eps)             # (B,)
    if n_virtual == 0:  # a singleton group has no spread: A = 0 (package rule)
        advantages = torch.where(stats.count[:n] > 1, advantages, torch.zeros_like(advantages))
    real = group_stats(rewards, group_ids=index)
    metrics = advantage_metrics(advantages, mask, real)
    homogeneous = real.zero_std                                                 # (n_groups,)
    moved = rewards.new_zeros(n_groups).index_add_(
        0, index, (advantages != 0).to(rewards.dtype)) > 0                     # (n_groups,)
    calibrated = (homogeneous & moved).sum()
    metrics["ngrpo/frac_calibrated_groups"] = float(calibrated / homogeneous.sum().clamp_min(1))
    return advantages.detach(), metrics


@register("policy_loss", "ngrpo", paper=PAPER, arxiv="2509.18851",
          summary="PPO-clip with asymmetric range (eps_low 0.16, eps_high 0.24), token mean, no KL")
def ngrpo(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
          mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None,
          entropy: torch.Tensor | None = None, clip_eps_low: float = 0.16,
          clip_eps_high: float = 0.24, beta: float = 0.0, kl_estimator: str = "k3",
          agg: str = "token_mean", norm: GlobalNorm | None = None,
          return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """NGRPO's asymmetric clipping: the PPO-clip loss with ε_low = 0.16 < ε_high = 0.24.

    Args:
        logprobs: (B, T) with grad; old_logprobs: (B, T) detached or None (on-policy).
        advantages: (B,) or (B, T), normally from ``advantage/ngrpo``.
        mask: (B, T) tokens that enter the loss.
        ref_logprobs, beta, kl_estimator: optional KL loss term (NGRPO uses none: β = 0).
        entropy: (B, T), reported only.
        clip_eps_low: ε_low, binds on negative advantages (tight, 0.16).
        clip_eps_high: ε_high, binds on positive advantages (loose, 0.24).
        agg, norm: token aggregation (``token_mean`` as the reference code).
        return_per_token: also return ``metrics["per_token_loss"]``.
    """
    if clip_eps_low > clip_eps_high:
        raise ValueError(f"clip_eps_low must be <= clip_eps_high for NGRPO's asymmetric clipping, "
                         f"got {clip_eps_low} > {clip_eps_high}")
    return clipped_policy_loss(
        logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs, entropy=entropy,
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, beta=beta,
        kl_estimator=kl_estimator, agg=agg, norm=norm, return_per_token=return_per_token)


__all__ = ["ngrpo", "ngrpo_advantages"]
