"""Advantage Weighted Matching (AWM): a policy gradient through the flow-matching loss itself.

Paper: "Advantage Weighted Matching: Aligning RL with Pretraining in Diffusion Models", Xue et al.,
arXiv 2509.25050 (reference code: scxue/advantage_weighted_matching).

The loss: re-noise each *final* sample x_0 at a time ``t`` and noise ``ε`` and use the negative
flow-matching error as a surrogate log-likelihood,

    x_t = (1 − t)x_0 + tε,   ℓ_θ = −mean_d (v_θ(x_t, t) − (ε − x_0))²,   ρ = exp(ℓ_θ − ℓ_old),

    L = mean_i max(−A_i ρ_i, −A_i clip(ρ_i, 1 ± ε_c)) + β · mean_i mean_d (v_θ − v_ref)²,

where ``v_θ`` is the trained field, ``ℓ_old`` the same quantity under the sampling policy on the
same (t, ε), ``A_i`` the group advantage of sample i (clipped to ±``adv_clip_max`` = 5), ``ε_c`` =
``clip_range`` = 1e-4, ``v_ref`` a frozen reference field at the same ``(x_t, t)``, β = ``beta`` and
mean_d the mean over the d coordinates. Intuition: on-policy (ρ = 1) the gradient is
``∇ mean_i A_i ‖v_θ − (ε − x_0)‖²/d`` — pretraining's CFM loss with per-sample weights −A: samples
with positive advantage are "pretrained on", negative ones pushed away.

Where it departs from Flow-GRPO: Flow-GRPO scores a sample by the log-probs of the SDE steps that
produced it (a high-variance estimate that needs an SDE sampler); AWM scores the final sample by
the matching error, so the sampler can be the plain ODE. The clipped surrogate is the same.

Choices:
- Uniform time weighting (the reference code's ``weighting='Uniform'``): no weight depends on t.
- The ratio is taken per sample (``exp_first``) on the mean over coordinates, not per coordinate.
- The KL to the reference is the ``Uniform`` form, the plain mean squared velocity difference;
  β defaults to 0 (off).
- The loss clips the advantages it is given to ±``adv_clip_max``.

On the toy (``flow_finetune``) each sample gets one ``(t, ε)`` with ``t ~ U[0, 1]`` clamped to
[0.02, 0.98], kept for all updates of the rollout, and the advantages are Flow-GRPO's group ones.
"""
from __future__ import annotations

import torch

from lab.checks import check_nonneg, check_positive, check_same_shape, check_tensor
from lab.registry import register
from lab.rl.core import clipped_surrogate, ratio as policy_ratio


def matching_loglik(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``ℓ = −mean_d (v_pred − (noise − x0))²`` : ``(N, d) -> (N,)``."""
    check_same_shape(v_pred=v_pred, x0=x0, noise=noise)
    return -((v_pred - (noise - x0)) ** 2).mean(-1)


@register("flow_loss", "awm",
          paper="Advantage Weighted Matching: Aligning RL with Pretraining in Diffusion Models",
          arxiv="2509.25050")
def awm_loss(v_pred: torch.Tensor, v_old: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
             advantages: torch.Tensor, *, v_ref: torch.Tensor | None = None, beta: float = 0.0,
             clip_range: float = 1e-4, adv_clip_max: float = 5.0) -> tuple[torch.Tensor, dict]:
    """Clipped AWM surrogate on ``v_pred = v_θ(x_t, t)`` vs ``v_old`` (same x_t, t); see module doc."""
    check_tensor("advantages", advantages, ndim=1)
    check_positive("clip_range", clip_range)
    check_positive("adv_clip_max", adv_clip_max)
    check_nonneg("beta", beta)
    check_same_shape(v_pred=v_pred, v_old=v_old)
    if advantages.shape[0] != v_pred.shape[0] or not torch.isfinite(advantages).all():
        raise ValueError(f"advantages must be finite with shape ({v_pred.shape[0]},)")
    adv = advantages.clamp(-adv_clip_max, adv_clip_max)
    rho = policy_ratio(matching_loglik(v_pred, x0, noise),
                       matching_loglik(v_old.detach(), x0, noise))             # (N,)
    pg, _ = clipped_surrogate(rho, adv, clip_range, clip_range)
    loss = pg.mean()
    metrics = {"clip_frac": float(((rho.detach() - 1).abs() > clip_range).float().mean()),
               "ratio_mean": float(rho.detach().mean()), "adv_mean": float(adv.mean())}
    if v_ref is not None:
        check_same_shape(v_pred=v_pred, v_ref=v_ref)
        kl = ((v_pred - v_ref.detach()) ** 2).mean()
        loss = loss + beta * kl
        metrics["kl"] = float(kl.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics


__all__ = ["awm_loss", "matching_loglik"]
