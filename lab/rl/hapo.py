"""HAPO: one normalized token-entropy signal drives sampling temperature, advantages and clipping.

Paper: "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature",
Liu et al., arXiv 2509.16591 (reference code: starriver030515/HAPO, a verl fork).

The update: entropy signal (``compute_entropy_h``). With H_{i,t} the token entropy and the statistics taken over
the valid tokens of the batch:

    u = log max(H, 1e-8);  q = quantile_p(u) ('nearest', p = entropy_pivot = 0.8)
    h = (u − q) / sqrt(max(mean((u − q)²), 1e-8))
    h̃ = h / max(h⁺) where h > 0,   h̃ = h / |min(h⁻)| where h ≤ 0      so h̃ ∈ [−1, 1]

h̃ > 0 marks the ~20% most uncertain tokens ("forks"), h̃ < 0 the confident ones. Then:

1. Adaptive temperature sampling (``sampler/adaptive_temperature``, in
   :mod:`lab.sampling.adaptive_temperature`): T_t = T·(1 + τ·h̃_t), with the
   pivot, scale and h̃-scales of the *previous* batch (τ = 0.05): hotter at forks, cooler elsewhere.
2. Token-level group average (``advantage/hapo_token``): every valid token of response i carries
   R_i; the group mean and population std are taken over *tokens*,
       μ_g = Σ_{i∈g} L_i R_i / Σ_{i∈g} L_i,   σ_g = sqrt(Σ_{i∈g} L_i (R_i − μ_g)² / Σ_{i∈g} L_i),
       A_i = (R_i − μ_g) / (σ_g + 1e-6);
   if any |A_i| ≥ 5 in a group, that group falls back to the GRPO advantage (unbiased std).
3. Differential advantage redistribution (no grad): A' = A·(1 + β_adv·h̃); neutral zone
   N_t = (1 − ε_low,t/2, 1 + ε_high,t/2) for ρ. For h̃ > 0: A_final = A if ρ ∈ N_t else A';
   for h̃ ≤ 0: A_final = A' if ρ ∈ N_t else A.
4. Asymmetric adaptive clipping: ε_low,t = ε_low·(1 − α_c·h̃) where h̃ ≤ 0 (else ε_low),
   ε_high,t = ε_high·(1 + α_c·h̃) where h̃ > 0 (else ε_high): confident tokens may be pushed down
   further (ε_low up to 2ε_low), uncertain ones pushed up further (ε_high up to 2ε_high). Then the
   dual-clip PPO loss (c = 10) with these per-token bounds, ``token_mean``, no KL.

Example: R = [1, 0], lengths [2, 4] -> token rewards (1,1,0,0,0,0), μ = 1/3, σ = 0.4714,
A = [1.4142, −0.7071] (GRPO: ±0.7071). ε = 0.2: h̃ = 0.5 -> ε_high,t = 0.3; h̃ = −0.5 -> ε_low,t = 0.3.

Where it departs from GRPO (its parent is DAPO): the temperature, the advantage and the clip range
are per token, functions of h̃; the group statistics weight each response by its length.

Choices where the public material is ambiguous:
- Sign: the released code scales negative h by 1/min(h) (a negative number), mapping confident
  tokens to *positive* h̃; the lab implements the paper's h̃ ∈ [−1, 1] and offers
  ``replicate_code_sign_bug=True`` for differential tests against the code.
- Per-token clip bounds: :func:`adaptive_clipped_surrogate` is ``lab.rl.core.clipped_surrogate``
  given tensor bounds (the same clip regions).
- The redistribution is applied inside the loss (it needs ρ, which changes between epochs), the
  token-level group average in the estimator. Responses with no valid token get A = 0.
- h̃ is fitted on the token entropies of one call (verl: the micro-batch), so under
  ``policy_optimization(minibatches=M)`` each minibatch fits its own quantile and scale: the split
  changes h̃ slightly (a statistic of the current policy's entropies, not of a group).
- The temperature sampler needs a previous batch; before its first ``update`` it samples at T.
  ``policy_optimization(token_sampler="adaptive_temperature")`` draws the rollout tokens with it
  (refitting after each batch; ``ℓ^old`` stays π_T's, as verl recomputes it at the base
  temperature); ``token_view`` shows T_t per token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lab.checks import check_positive, check_range, check_tensor
from lab.registry import register
from lab.rl.core import (
    clipped_surrogate,
    kl_penalty,
    GlobalNorm, advantage_metrics, aggregate, as_mask, check_clip_eps, check_per_token, check_rewards, expand_advantages, group_index, group_normalize, group_stats,
    masked_mean, policy_metrics, prepare_policy_inputs, ratio,
)

PAPER = "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature"
ARXIV = "2509.16591"


# ---------------------------------------------------------------------------------------------
# The entropy signal h̃
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EntropyScale:
    """The batch statistics that map log-entropy u to h̃ (kept by the temperature sampler)."""

    pivot: float       # q, the p-quantile of u
    scale: float       # sqrt(mean((u − q)²)) (≥ 1e-4)
    scale_pos: float   # 1 / max(h⁺)
    scale_neg: float   # 1 / |min(h⁻)| (paper) or 1 / min(h) (code, negative)


def fit_entropy_scale(entropy: torch.Tensor, mask: torch.Tensor, *, entropy_pivot: float = 0.8,
                      replicate_code_sign_bug: bool = False) -> EntropyScale:
    """Fit q, the scale and the h̃-scales on the valid tokens of a batch."""
    check_range("entropy_pivot", entropy_pivot, 0.0, 1.0)
    m = as_mask(mask, entropy).bool()
    u = torch.log(entropy.detach().float().clamp_min(1e-8))[m]                # valid tokens
    if u.numel() == 0:
        return EntropyScale(0.0, 1.0, 1.0, 1.0)
    q = torch.quantile(u, entropy_pivot, interpolation="nearest")
    scale = ((u - q) ** 2).mean().clamp_min(1e-8).sqrt()
    h = (u - q) / scale
    pos = h.max().clamp_min(1e-8)
    low = h.min()
    # paper: 1/|min h| keeps h̃ ≤ 0; code: 1/min h flips the sign of confident tokens
    neg = low if replicate_code_sign_bug else low.abs()
    neg = neg if neg.abs() >= 1e-8 else torch.tensor(1e-8, device=low.device)
    return EntropyScale(float(q), float(scale), float(1.0 / pos), float(1.0 / neg))


def normalized_entropy(entropy: torch.Tensor, mask: torch.Tensor | None = None, *,
                       entropy_pivot: float = 0.8, scale: EntropyScale | None = None,
                       replicate_code_sign_bug: bool = False) -> torch.Tensor:
    """h̃ (same shape as ``entropy``), in [−1, 1]; fitted on ``entropy``/``mask`` unless ``scale``."""
    check_tensor("entropy", entropy, dtype_kind="float")
    if scale is None:
        if mask is None:
            mask = torch.ones_like(entropy, dtype=torch.bool)
        scale = fit_entropy_scale(entropy, mask, entropy_pivot=entropy_pivot,
                                  replicate_code_sign_bug=replicate_code_sign_bug)
    u = torch.log(entropy.detach().float().clamp_min(1e-8))
    h = (u - scale.pivot) / scale.scale
    # h̃ = h·scale_pos where h > 0, h·scale_neg where h ≤ 0
    h_tilde = torch.where(h > 0, h * scale.scale_pos, h * scale.scale_neg)
    return h_tilde.clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Clip bounds, redistribution and the per-token clipped surrogate
# ---------------------------------------------------------------------------------------------
def adaptive_clip_bounds(h_tilde: torch.Tensor, clip_eps_low: float = 0.2,
                         clip_eps_high: float = 0.2, clip_alpha: float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (ε_low,t, ε_high,t): widened below for confident, above for uncertain tokens."""
    check_clip_eps(clip_eps_low, clip_eps_high)
    check_positive("clip_alpha", clip_alpha, allow_zero=True)
    # ε_low,t = ε_low·(1 − α_c·h̃) where h̃ ≤ 0;  ε_high,t = ε_high·(1 + α_c·h̃) where h̃ > 0
    eps_low = clip_eps_low * (1.0 - clip_alpha * h_tilde.clamp(max=0.0))
    eps_high = clip_eps_high * (1.0 + clip_alpha * h_tilde.clamp(min=0.0))
    return eps_low, eps_high


def redistribute_advantages(advantages: torch.Tensor, h_tilde: torch.Tensor, ratio: torch.Tensor,
                            eps_low: torch.Tensor, eps_high: torch.Tensor,
                            adv_beta: float = 1.0) -> torch.Tensor:
    """Differential advantage redistribution (all (B, T), detached)."""
    check_positive("adv_beta", adv_beta, allow_zero=True)
    scaled = advantages * (1.0 + adv_beta * h_tilde)                            # A' = A(1 + β h̃)
    rho = ratio.detach()
    neutral = (rho > 1.0 - eps_low / 2) & (rho < 1.0 + eps_high / 2)           # ρ ∈ N_t
    # h̃ > 0: A inside N, A' outside;  h̃ ≤ 0: A' inside N, A outside
    use_scaled = torch.where(h_tilde > 0, ~neutral, neutral)
    return torch.where(use_scaled, scaled, advantages)


def adaptive_clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor,
                               eps_low: torch.Tensor, eps_high: torch.Tensor,
                               dual_clip: float | None = None
                               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``max(−ρA, −clip(ρ, 1−ε_low,t, 1+ε_high,t)A)`` with per-token bounds, optional dual clip:
    ``lab.rl.core.clipped_surrogate`` given tensor bounds (same TRL clip regions)."""
    return clipped_surrogate(ratio, advantages, eps_low, eps_high, dual_clip)


# ---------------------------------------------------------------------------------------------
# Estimator, loss, sampler
# ---------------------------------------------------------------------------------------------
@register("advantage", "hapo_token", paper=PAPER, arxiv=ARXIV,
          summary="HAPO token-level group average: group mean/std over tokens, GRPO fallback")
def hapo_token_advantages(rewards: torch.Tensor, *, mask: torch.Tensor,
                          group_size: int | None = None, group_ids: torch.Tensor | None = None,
                          fallback_abs: float = 5.0, eps: float = 1e-6
                          ) -> tuple[torch.Tensor, dict[str, Any]]:
    """``A_i = (R_i − μ_g)/(σ_g + eps)`` with length-weighted (token-level) group statistics.

    Args:
        rewards: (B,) outcome rewards.
        mask: (B, T) response mask (the lengths L_i weight the statistics).
        group_size, group_ids: the groups (exactly one of them).
        fallback_abs: a group with any |A_i| ≥ this uses the GRPO advantage instead (5.0).
        eps: added to the std.

    Returns:
        ``(advantages (B,), metrics)`` with ``hapo/frac_fallback_groups``.
    """
    rewards = check_rewards(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    check_tensor("mask", mask, ndim=2)
    if mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"mask must have {rewards.shape[0]} rows like rewards, got {tuple(mask.shape)}")
    check_positive("fallback_abs", fallback_abs)
    check_positive("eps", eps, allow_zero=True)
    index, n_groups = group_index(rewards.shape[0], group_size=group_size, group_ids=group_ids,
                                  device=rewards.device)
    valid = mask.bool()
    # one entry per valid token: the response's reward, labelled with the response's group
    token_rewards = rewards[:, None].expand(mask.shape)[valid]                  # (N_tok,)
    token_groups = index[:, None].expand(mask.shape)[valid]                     # (N_tok,)
    mean_g = rewards.new_zeros(n_groups)
    std_g = rewards.new_ones(n_groups)
    if token_rewards.numel():
        tok = group_stats(token_rewards, group_ids=token_groups, std="population")
        mean_g.scatter_(0, token_groups, tok.mean)                              # equal within a group
        std_g.scatter_(0, token_groups, tok.std)
    token_level = (rewards - mean_g[index]) / (std_g[index] + eps)              # (B,)
    grpo, stats = group_normalize(rewards, group_ids=index, std="unbiased", eps=eps)
    extreme = rewards.new_zeros(n_groups).index_add_(
        0, index, (token_level.abs() >= fallback_abs).to(rewards.dtype)) > 0   # (n_groups,)
    advantages = torch.where(extreme[index], grpo, token_level)
    advantages = torch.where(valid.any(-1), advantages, torch.zeros_like(advantages))
    metrics = advantage_metrics(advantages, mask, stats)
    metrics["hapo/frac_fallback_groups"] = float(extreme.to(torch.float32).mean())
    return advantages.detach(), metrics


@register("policy_loss", "hapo", paper=PAPER, arxiv=ARXIV,
          summary="HAPO: entropy-driven advantage redistribution and asymmetric adaptive clipping")
def hapo(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
         mask: torch.Tensor, *, entropy: torch.Tensor, ref_logprobs: torch.Tensor | None = None,
         clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, dual_clip: float | None = 10.0,
         entropy_pivot: float = 0.8, adv_beta: float = 1.0, clip_alpha: float = 1.0,
         adaptive_advantage: bool = True, adaptive_clip: bool = True,
         replicate_code_sign_bug: bool = False, beta: float = 0.0, kl_estimator: str = "k3",
         agg: str = "token_mean", norm: GlobalNorm | None = None,
         return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """HAPO's policy loss: per-token clip bounds and redistributed advantages from h̃.

    Args:
        logprobs, old_logprobs, advantages, mask: as ``policy_loss/grpo``.
        entropy: (B, T) token entropies of the batch (h̃ is fitted on them).
        ref_logprobs, beta, kl_estimator: optional KL loss term (HAPO: none).
        clip_eps_low, clip_eps_high: base ε_low, ε_high (0.2, 0.2).
        dual_clip: c of the dual clip (10 as the reference scripts; None = off).
        entropy_pivot: p of the pivot quantile (0.8).
        adv_beta: β_adv of the redistribution A' = A(1 + β_adv h̃).
        clip_alpha: α_c of the adaptive clip bounds.
        adaptive_advantage, adaptive_clip: switch each mechanism off (ablations).
        replicate_code_sign_bug: use the released code's h̃ sign for h < 0.
        agg, norm, return_per_token: as GRPO (``token_mean``).

    Metrics add ``hapo/eps_low_mean``, ``hapo/eps_high_mean``, ``hapo/h_mean``,
    ``hapo/redistributed_frac``; with ``return_per_token`` also ``h_tilde``, ``eps_low``,
    ``eps_high`` (B, T) for plots.
    """
    logprobs, mask_f, advantages, old_logprobs = prepare_policy_inputs(
        logprobs, old_logprobs, advantages, mask)
    entropy = check_per_token("entropy", entropy, logprobs.shape)
    check_positive("beta", beta, allow_zero=True)
    h_tilde = normalized_entropy(entropy, mask_f, entropy_pivot=entropy_pivot,
                                 replicate_code_sign_bug=replicate_code_sign_bug)  # (B, T)
    alpha = clip_alpha if adaptive_clip else 0.0
    eps_low, eps_high = adaptive_clip_bounds(h_tilde, clip_eps_low, clip_eps_high, alpha)
    rho = ratio(logprobs, old_logprobs)                                          # (B, T)
    adv = expand_advantages(advantages, mask_f)                                  # (B, T)
    final = (redistribute_advantages(adv, h_tilde, rho, eps_low, eps_high, adv_beta)
             if adaptive_advantage else adv)
    pg, regions = adaptive_clipped_surrogate(rho, final, eps_low, eps_high, dual_clip)
    pg_loss = aggregate(pg, mask_f, agg, norm)
    loss, per_token, kl_values = kl_penalty(pg, pg_loss, logprobs, ref_logprobs, mask_f, beta=beta,
                                            kl_estimator=kl_estimator, agg=agg, norm=norm)
    metrics = policy_metrics(mask_f, loss=loss, pg_loss=pg_loss, ratio=rho, advantages=adv,
                             regions=regions, logprobs=logprobs, old_logprobs=old_logprobs,
                             kl=kl_values, entropy=entropy)
    metrics["hapo/eps_low_mean"] = float(masked_mean(eps_low, mask_f))
    metrics["hapo/eps_high_mean"] = float(masked_mean(eps_high, mask_f))
    metrics["hapo/h_mean"] = float(masked_mean(h_tilde, mask_f))
    metrics["hapo/redistributed_frac"] = float(masked_mean((final != adv).float(), mask_f))
    if return_per_token:
        metrics["per_token_loss"] = per_token.detach()
        metrics["h_tilde"], metrics["eps_low"], metrics["eps_high"] = h_tilde, eps_low, eps_high
    return loss, metrics


__all__ = ["EntropyScale", "adaptive_clip_bounds",
           "adaptive_clipped_surrogate", "fit_entropy_scale", "hapo", "hapo_token_advantages",
           "normalized_entropy", "redistribute_advantages"]
