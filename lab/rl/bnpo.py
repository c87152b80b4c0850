"""BNPO: Beta normalization of binary-reward advantages, with parameters refitted every batch.

Paper: "BNPO: Beta Normalization Policy Optimization", Xiao et al., arXiv 2506.02864 (reference
code: changyi7231/BNPO, ``compute_bnpo_outcome_advantage``).

Not to be confused with TRL's ``loss_type="bnpo"``: that is only a token normalization of the
loss (a token mean over the local batch). This module is the paper's *advantage* normalization.

The estimator: with binary rewards, a prompt's success rate p = E[R | q] is a probability, and
across the prompts of a batch it is distributed roughly as a Beta(a, b) density that moves as the
policy learns. BNPO divides the baseline-corrected reward by a Beta density evaluated at the
group's success rate:

    R̃_i = (R_i − r_min) / (r_max − r_min)                 rewards mapped into [0, 1]
    p_g = mean_{i∈g} R̃_i                                   group success rate (the baseline)
    μ = mean_g p_g,  σ² = var_unbiased(p_g)                over the groups of the batch
    c = μ(1 − μ)/σ² − 1,  a = c·μ,  b = c·(1 − μ)          method-of-moments Beta(a, b) fit
    α = max(1 + a/3, 1),  β = max(1 + b/3, 1)              the variance-minimizing normalizer
    w_g = min(1 / f(p_g; α, β), w_max),  A_i = w_{g(i)} · (R̃_i − p_{g(i)})

R_i is the reward of response i, r_min and r_max the reward range, g(i) its group; f(·; α, β) is
the Beta(α, β) density, w_max a cap on the weight (``weight_max`` = 1e6, as the reference code).
Because α, β are refitted on every batch, the normalization follows the changing distribution of
difficulty ("dynamically updated parameters").

Limiting cases (the paper's): α = β = 1 gives f ≡ 1, A = R̃ − p, REINFORCE with a group-mean
baseline; α = β = 3/2 gives f(p) = sqrt(p(1−p))/B(3/2, 3/2) = (8/π)·σ_pop(p), so
A = (π/8)·(R − p)/σ_pop: GRPO with population std (a constant factor π/8 aside). Pass
``norm_alpha`` and ``norm_beta`` to fix them.

Advantage decomposition (several rewards, e.g. accuracy and format): rewards (B, K) are normalized
column by column, each with its own (α_k, β_k), and averaged: A_i = (1/K) Σ_k A_i^{(k)}. A sum of
components would make their success rates non-binary; normalizing each keeps each one binary.

Example: groups [1, 0, 0, 1] (p = 0.5) and [1, 0, 0, 0] (p = 0.25): μ = 0.375, σ² = 0.03125, c = 6.5,
α = 1.8125, β = 2.35417; f(0.5) = 1.46691 -> A = ±0.34085; f(0.25) = 1.44635 ->
A = [0.51855, −0.17285, −0.17285, −0.17285].

Where it departs from GRPO: the per-group scale is 1/f(p_g; α, β), a function of the success rate
whose shape is fitted to the whole batch, instead of 1/std_g; rewards are centred by p_g.
BNPO's loss is any PPO-clip loss (the paper's runs: ε_low 0.2, ε_high 0.28, dual clip 10,
``seq_mean_token_sum``, no KL) — use ``policy_loss/dapo`` or ``grpo`` with those arguments.

Choices where the public material is ambiguous:
- One group in the batch: the reference code sets μ := 0, σ² := 1, so α = β = 1 (A = R̃ − p); the
  lab does the same.
- All groups with the same p (σ² = 0): the success rates are a point mass and the method of
  moments has no solution (c = ∞). Clamping σ² (the lab's earlier choice) gave α, β ≈ 4·10⁶, a
  density spike at p and |A| ≈ 3·10⁻⁴: the update vanished without a word. The lab handles the
  degenerate case explicitly, as the single-group case: α = β = 1 (the uniform density, A = R̃ − p,
  REINFORCE with a group-mean baseline), and reports it in the metric ``bnpo/degenerate_fit``
  (share of reward columns whose fit was degenerate). "Same p" means σ² ≤ 1e-12, far below the
  smallest non-zero variance of success rates (≥ 1/(n·G²) for n groups of G).
- p ∈ {0, 1} with α or β > 1: the density is 0 and w = w_max, but R̃ − p = 0 there, so A = 0; the
  density is computed in log space (``xlogy``), never NaN.
- Singleton groups: the reference code sets p := 0 (A = R̃); the lab uses p = R̃ (A = 0, the
  package rule for singleton groups).
- Rewards outside [r_min, r_max] raise ValueError.

Shared pieces: the groups and their means are ``lab.rl.core.group_index`` / ``group_stats``
(the singleton rule above is BNPO's own), the metrics ``lab.rl.core.advantage_metrics``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lab.checks import check_number, check_positive
from lab.registry import register
from lab.rl.core import advantage_metrics, check_rewards, group_index, group_stats

PAPER = "BNPO: Beta Normalization Policy Optimization"
DEGENERATE_VAR = 1e-12
"""σ² at or below which the groups' success rates count as identical (no Beta fit exists)."""


def beta_log_density(p: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """log f(p; α, β) of the Beta density, finite-or-−inf at p ∈ {0, 1} (``xlogy``)."""
    log_norm = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    return torch.xlogy(alpha - 1.0, p) + torch.xlogy(beta - 1.0, 1.0 - p) - log_norm


def is_degenerate(success_rates: torch.Tensor) -> bool:
    """True when no Beta can be fitted: fewer than two groups, or all p_g equal (σ² ≤ 1e-12)."""
    return success_rates.numel() < 2 or float(success_rates.var(unbiased=True)) <= DEGENERATE_VAR


def fit_beta_parameters(success_rates: torch.Tensor) -> tuple[float, float]:
    """(α, β) of BNPO from the groups' success rates p_g (method of moments, then 1 + a/3).

    Degenerate batches (:func:`is_degenerate`: one group, or every group with the same p) get
    α = β = 1, the reference code's convention for a single group (μ := 0, σ² := 1).
    """
    if is_degenerate(success_rates):
        mu, var = 0.0, 1.0
    else:
        mu = float(success_rates.mean())
        var = float(success_rates.var(unbiased=True))
    # c = μ(1 − μ)/σ² − 1, a = cμ, b = c(1 − μ)
    c = mu * (1.0 - mu) / var - 1.0
    a, b = c * mu, c * (1.0 - mu)
    # α = max(1 + a/3, 1), β = max(1 + b/3, 1)
    return max(1.0 + a / 3.0, 1.0), max(1.0 + b / 3.0, 1.0)


def _bnpo_column(rewards: torch.Tensor, index: torch.Tensor, alpha: float | None,
                 beta: float | None, weight_max: float) -> tuple[torch.Tensor, float, float, bool]:
    """BNPO advantages of one reward column (B,) already mapped into [0, 1]."""
    stats = group_stats(rewards, group_ids=index, std="none")
    p = stats.mean                                                              # (B,) p_{g(i)}
    # one p per group (every row of a group holds the same p, so the scatter order is irrelevant)
    p_groups = p.new_zeros(stats.n_groups).scatter_(0, stats.index, p)
    fit_alpha, fit_beta = fit_beta_parameters(p_groups)
    degenerate = (alpha is None or beta is None) and is_degenerate(p_groups)
    alpha = fit_alpha if alpha is None else alpha
    beta = fit_beta if beta is None else beta
    # w_g = min(1 / f(p_g; α, β), w_max), computed as exp(−log f)
    weight = torch.exp(-beta_log_density(p, alpha, beta)).clamp(max=weight_max)  # (B,)
    advantages = weight * (rewards - p)
    advantages = torch.where(stats.count > 1, advantages, torch.zeros_like(advantages))
    return advantages, alpha, beta, degenerate


@register("advantage", "bnpo", paper=PAPER, arxiv="2506.02864",
          summary="Binary-reward advantages normalized by a Beta density refitted on every batch")
def bnpo_advantages(rewards: torch.Tensor, *, group_size: int | None = None,
                    group_ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                    r_min: float = 0.0, r_max: float = 1.0, weight_max: float = 1e6,
                    norm_alpha: float | None = None, norm_beta: float | None = None
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    """BNPO advantages ``A_i = (R̃_i − p_g) / f(p_g; α, β)``, averaged over reward columns.

    Args:
        rewards: (B,) or (B, K) rewards in [r_min, r_max] (K components: advantage decomposition).
        group_size, group_ids: the groups (exactly one of them).
        mask: (B, T) response mask, only used for the metrics.
        r_min, r_max: the reward range mapped onto [0, 1].
        weight_max: upper clamp of the weight 1/f (1e6 as the reference code).
        norm_alpha, norm_beta: fix the normalizing Beta(α, β) instead of fitting it (α = β = 1:
            REINFORCE with group-mean baseline; α = β = 3/2: GRPO up to the factor π/8).
            None = fitted on the batch. (Named apart from the KL weight ``beta`` of the losses,
            which a training loop may pass around.)

    Returns:
        ``(advantages (B,), metrics)`` with ``bnpo/alpha``, ``bnpo/beta`` (mean over components),
        ``bnpo/degenerate_fit`` (share of components whose batch allowed no Beta fit) and, for K > 1, ``bnpo/alpha_k``, ``bnpo/beta_k`` per component k.
    """
    rewards = check_rewards(rewards)
    r_min, r_max = check_number("r_min", r_min), check_number("r_max", r_max)
    if r_max <= r_min:
        raise ValueError(f"r_max must be > r_min, got r_min={r_min}, r_max={r_max}")
    check_positive("weight_max", weight_max)
    for name, value in (("norm_alpha", norm_alpha), ("norm_beta", norm_beta)):
        if value is not None and check_number(name, value) <= 0:
            raise ValueError(f"{name} must be > 0 (a Beta parameter), got {value}")
    if (rewards < r_min).any() or (rewards > r_max).any():
        raise ValueError(f"rewards must lie in [r_min, r_max] = [{r_min}, {r_max}]; got range "
                         f"[{rewards.min().item()}, {rewards.max().item()}]")
    index, _ = group_index(rewards.shape[0], group_size=group_size, group_ids=group_ids,
                           device=rewards.device)
    scaled = (rewards - r_min) / (r_max - r_min)                                # R̃ in [0, 1]
    columns = scaled[:, None] if scaled.dim() == 1 else scaled                   # (B, K)
    per_column, alphas, betas, degenerate = [], [], [], []
    for k in range(columns.shape[1]):
        adv_k, alpha_k, beta_k, deg_k = _bnpo_column(columns[:, k], index, norm_alpha, norm_beta,
                                                     weight_max)
        degenerate.append(deg_k)
        per_column.append(adv_k)
        alphas.append(alpha_k)
        betas.append(beta_k)
    # advantage decomposition: A = (1/K) Σ_k A^{(k)}
    advantages = torch.stack(per_column, dim=1).mean(dim=1)                     # (B,)
    metrics = advantage_metrics(advantages, mask, group_stats(rewards, group_ids=index))
    metrics["bnpo/alpha"] = sum(alphas) / len(alphas)
    metrics["bnpo/beta"] = sum(betas) / len(betas)
    metrics["bnpo/degenerate_fit"] = sum(degenerate) / len(degenerate)
    if len(alphas) > 1:
        for k, (a_k, b_k) in enumerate(zip(alphas, betas)):
            metrics[f"bnpo/alpha_{k}"], metrics[f"bnpo/beta_{k}"] = a_k, b_k
    return advantages.detach(), metrics


__all__ = ["bnpo_advantages", "beta_log_density", "fit_beta_parameters", "is_degenerate"]
