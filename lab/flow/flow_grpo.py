"""Flow-GRPO / DanceGRPO: GRPO on the steps of a marginal-preserving SDE sampler.

"Flow-GRPO: Training Flow Matching Models via Online RL" (Liu et al., arXiv 2505.05470) and
"DanceGRPO: Unleashing GRPO on Visual Generation" (Xue et al., arXiv 2505.07818).

1. ODE → SDE. A flow model samples by the ODE ``dx = v dt``, which has no log-probabilities.
   Both papers replace it by an SDE with the same marginals (see :mod:`lab.flow.core`):
   ``μ_j = x_j + [v + (g_j²/(2σ_j))(x_j + (1 − σ_j)v)]dt``, ``x_{j+1} = μ_j + g_j sqrt(−dt) z``.
   Flow-GRPO uses ``g = a·sqrt(σ/(1 − σ))`` (``schedule="flow_grpo"``, a = 0.7); DanceGRPO a constant
   ``g = η`` (``schedule="dance"``) — the same function with a pluggable schedule.
2. Group advantages. G samples share a condition (a group); ``A_i = (r_i − mean_g r)/std_g r``,
   or with ``global_std`` the batch std in the denominator, clipped to ±``adv_clip_max`` = 5.
   The group statistics are :func:`lab.rl.core.group_normalize` (the GRPO estimator of the lab).
3. Loss per step j: the DDPO clipped surrogate (``clip_range`` 1e-4) plus a KL to the frozen
   reference. Both step distributions are Gaussians with the same std ``s_j = g_j sqrt(−dt)``, so
   the KL is closed form:

       L = mean_{i,j} max(−A_i ρ_ij, −A_i clip(ρ_ij, 1 ± ε_c)) + β · mean_{i,j} mean_d (μ_θ − μ_ref)² / (2 s_j²).

Departure from DDPO (:mod:`lab.flow.ddpo`): group- rather than batch-normalised advantages and
the analytic per-step KL. β defaults to 0.04 (most Flow-GRPO configs; the base config has 0.0).
On the unconditional toy a "group" is a block of G consecutive samples; DanceGRPO's shared initial
noise per group is an option of the experiment, not of the loss.
"""
from __future__ import annotations

import torch

from lab.checks import check_nonneg, check_positive, check_tensor
from lab.flow.ddpo import clipped_step_loss
from lab.registry import register
from lab.rl.core import group_normalize


def flow_grpo_advantages(rewards: torch.Tensor, *, group_size: int, global_std: bool = False,
                         adv_clip_max: float = 5.0, eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised, clipped advantages ``(B,)`` (groups = contiguous blocks of ``group_size``)."""
    check_positive("adv_clip_max", adv_clip_max)
    if global_std:
        centred, _ = group_normalize(rewards, group_size=group_size, std="none")
        adv = centred / (rewards.std() + eps)
    else:
        adv, _ = group_normalize(rewards, group_size=group_size, eps=eps)
    return adv.clamp(-adv_clip_max, adv_clip_max)


def gaussian_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ, s²I) ‖ N(μ_ref, s²I))`` per sample and step, averaged over coordinates: ``(B, S)``.

    ``mean``/``ref_mean`` are ``(S, B, d)``, ``std`` is ``(S,)``.
    """
    check_tensor("mean", mean, ndim=3)
    if ref_mean.shape != mean.shape:
        raise ValueError(f"ref_mean must have shape {tuple(mean.shape)}, got {tuple(ref_mean.shape)}")
    if std.shape != (mean.shape[0],) or not (std > 0).all():
        raise ValueError(f"std must be positive with shape ({mean.shape[0]},)")
    kl = ((mean - ref_mean.detach()) ** 2).mean(-1) / (2 * std[:, None] ** 2)  # (S, B)
    return kl.T


@register("flow_loss", "flow_grpo", paper="DanceGRPO: Unleashing GRPO on Visual Generation",
          arxiv="2505.07818")
def flow_grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
                   mean: torch.Tensor | None = None, ref_mean: torch.Tensor | None = None,
                   std: torch.Tensor | None = None, beta: float = 0.04, clip_range: float = 1e-4,
                   adv_clip_max: float = 5.0) -> tuple[torch.Tensor, dict]:
    """Per-step clipped surrogate + ``β``·analytic KL to the reference step means (when given)."""
    check_nonneg("beta", beta)
    loss, metrics = clipped_step_loss(logprobs, old_logprobs, advantages, clip_range, adv_clip_max)
    if ref_mean is not None:
        if mean is None or std is None:
            raise ValueError("mean and std are required with ref_mean")
        kl = gaussian_mean_kl(mean, ref_mean, std).mean()
        loss = loss + beta * kl
        metrics.update(loss=float(loss.detach()), kl=float(kl.detach()))
    return loss, metrics


__all__ = ["flow_grpo_loss", "flow_grpo_advantages", "gaussian_mean_kl"]
