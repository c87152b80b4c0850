"""Flow-GRPO / DanceGRPO: GRPO on the steps of a marginal-preserving SDE sampler of a flow model.

Paper: "Flow-GRPO: Training Flow Matching Models via Online RL", Liu et al., arXiv 2505.05470
(reference code: yifan123/flow_grpo) and "DanceGRPO: Unleashing GRPO on Visual Generation", Xue
et al., arXiv 2505.07818 (reference code: XueZeyue/DanceGRPO).

The loss: a flow model samples by the ODE ``dx = v dt``, which has no log-probabilities; both
papers replace it by an SDE with the same marginals (:mod:`lab.flow.core`),
``μ_j = x_j + [v + (g_j²/(2σ_j))(x_j + (1 − σ_j)v)]dt_j``, ``x_{j+1} = μ_j + g_j sqrt(−dt_j) z``,
and train each step as a Gaussian policy with group advantages and a KL to a frozen reference:

    L = mean_{i,j} max(−A_i ρ_ij, −A_i clip(ρ_ij, 1 ± ε_c)) + β · mean_{i,j} mean_d (μ_θ − μ_ref)² / (2 g_j²),

where σ_j is the sampler time of step j, ``dt_j = σ_{j+1} − σ_j < 0``, z ~ N(0, I), g_j the
diffusion coefficient (``schedule="flow_grpo"``: ``g = a·sqrt(σ/(1 − σ))``, a = 0.7;
``schedule="dance"``: the constant ``g = η``), ``ρ_ij`` the per-step ratio to the sampling policy,
``ε_c`` = ``clip_range`` = 1e-4, ``A_i = clip((r_i − mean_g r)/(std_g r + 1e-6), ±5)`` with the mean
and std over the G samples of i's group g (with ``global_std`` the batch std in the denominator),
``μ_θ``/``μ_ref`` the step means of the trained and the reference field on the same stored state,
mean_d the mean over the d coordinates, and β = ``beta``. Intuition: within a group of samples of
one condition, steps of the better-than-average samples are made more likely, while the KL keeps
each step's mean near the pretrained model's.

Where it departs from DDPO: group- rather than batch-normalised advantages and the analytic
per-step KL to a reference; the sampler is the flow's SDE with a pluggable noise schedule (one
function for both papers).

Choices:
- The KL term is scaled as the authors' code scales it (``train_sd3.py``:
  ``((prev_sample_mean − prev_sample_mean_ref)²).mean() / (2·std_dev_t²)`` with ``std_dev_t`` = g_j,
  not the step std ``s_j = g_j sqrt|dt_j|``): it equals ``|dt_j|`` × the exact KL of the two
  Gaussian steps, ``(μ_θ − μ_ref)²/(2 s_j²)`` per coordinate, which :func:`gaussian_mean_kl` gives
  with ``std = s_j``. Following the code keeps β values from Flow-GRPO configs meaningful.
- β defaults to 0.04 (most Flow-GRPO configs; their base config has 0.0); the KL is only added when
  ``ref_mean`` is given, and then ``mean`` and ``std_dev_t`` are required (``ValueError``).
- On the unconditional toy a group is a block of G consecutive samples; the group std is the
  unbiased one; DanceGRPO's shared initial noise per group is an option of the ``flow_finetune``
  experiment (``shared_noise``), not of the loss.
- The clipped surrogate, ratio clipping and advantage clipping are DDPO's
  (:func:`lab.flow.ddpo.clipped_step_loss`).
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


def gaussian_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor, *,
                     name: str = "std") -> torch.Tensor:
    """``mean_d (μ − μ_ref)² / (2 std²)`` per sample and step: ``(B, S)``.

    With ``std`` the step std ``s_j`` this is ``KL(N(μ, s²I) ‖ N(μ_ref, s²I))`` averaged over
    coordinates; with the diffusion coefficient ``g_j`` it is Flow-GRPO's KL term
    (:func:`flow_grpo_kl`). ``mean``/``ref_mean`` are ``(S, B, d)``, ``std`` is ``(S,)``.
    """
    check_tensor("mean", mean, ndim=3)
    if ref_mean.shape != mean.shape:
        raise ValueError(f"ref_mean must have shape {tuple(mean.shape)}, got {tuple(ref_mean.shape)}")
    if std.shape != (mean.shape[0],) or not (std > 0).all():
        raise ValueError(f"{name} must be positive with shape ({mean.shape[0]},)")
    kl = ((mean - ref_mean.detach()) ** 2).mean(-1) / (2 * std[:, None] ** 2)  # (S, B)
    return kl.T


def flow_grpo_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std_dev_t: torch.Tensor) -> torch.Tensor:
    """Flow-GRPO's KL term ``mean_d (μ_θ − μ_ref)² / (2 g_j²)`` per sample and step ``(B, S)``.

    ``std_dev_t (S,)`` is the diffusion coefficient ``g_j`` of each step (the authors' name), not
    the step std ``g_j·sqrt|dt_j|``: the term equals ``|dt_j|`` × the exact KL of the two steps.
    """
    return gaussian_mean_kl(mean, ref_mean, std_dev_t, name="std_dev_t")


@register("flow_loss", "flow_grpo", paper="DanceGRPO: Unleashing GRPO on Visual Generation",
          arxiv="2505.07818")
def flow_grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
                   mean: torch.Tensor | None = None, ref_mean: torch.Tensor | None = None,
                   std_dev_t: torch.Tensor | None = None, beta: float = 0.04, clip_range: float = 1e-4,
                   adv_clip_max: float = 5.0) -> tuple[torch.Tensor, dict]:
    """Per-step clipped surrogate + ``β``·:func:`flow_grpo_kl` to the reference step means (when given).

    ``logprobs``/``old_logprobs (B, S)``, ``advantages (B,)``; ``mean``/``ref_mean (S, B, d)`` and
    ``std_dev_t (S,)`` (the diffusion coefficients g_j) are needed with ``ref_mean``.
    """
    check_nonneg("beta", beta)
    loss, metrics = clipped_step_loss(logprobs, old_logprobs, advantages, clip_range, adv_clip_max)
    if ref_mean is not None:
        if mean is None or std_dev_t is None:
            raise ValueError("mean and std_dev_t are required with ref_mean")
        kl = flow_grpo_kl(mean, ref_mean, std_dev_t).mean()
        loss = loss + beta * kl
        metrics.update(loss=float(loss.detach()), kl=float(kl.detach()))
    return loss, metrics


__all__ = ["flow_grpo_loss", "flow_grpo_advantages", "flow_grpo_kl", "gaussian_mean_kl"]
