"""DDPO: each denoising step of a stochastic sampler is an action of an MDP.

"Training Diffusion Models with Reinforcement Learning" (Black, Janner, Du, Kostrikov, Levine,
arXiv 2305.13301). State ``(x_j, σ_j)``, action ``x_{j+1}``, policy one sampler step
``π_θ(x_{j+1} | x_j) = N(μ_θ(x_j), s_j² I)``, reward ``r(x_S)`` only at the end. With advantage
``A`` (batch-normalised reward, clipped to ±``adv_clip_max``) and ratio
``ρ_j = exp(log π_θ − log π_old)`` per step, the DDPO_IS loss is PPO's clipped surrogate averaged
over samples i and trained steps j:

    L(θ) = mean_{i,j} max(−A_i ρ_ij, −A_i clip(ρ_ij, 1 − ε_c, 1 + ε_c)),   ε_c = 1e-4,

and DDPO_SF (``mode="sf"``) is REINFORCE, ``L = −mean_{i,j} A_i log π_θ``.

Departures / choices: the paper's policy is a DDIM(η = 1) step; on the lab's flow toy the policy is
the marginal-preserving Euler–Maruyama step of :mod:`lab.flow.core` (as the spec asks). The paper
normalises rewards per prompt with a running tracker; the toy is unconditional, so the whole batch is
one group (:func:`lab.rl.core.group_normalize` with ``group_size = B``). Log-probs are means over
coordinates (as in ddpo-pytorch), so ``ε_c = 1e-4`` is a very tight trust region: with one inner
epoch the first update is exactly on-policy (ρ = 1) and the clip only matters on later epochs.
The same clipped surrogate and ratio as every lab policy loss come from :mod:`lab.rl.core`.
"""
from __future__ import annotations

import torch

from lab.checks import check_choice, check_positive, check_tensor
from lab.registry import register
from lab.rl.core import clipped_surrogate, group_normalize, ratio as policy_ratio


def ddpo_advantages(rewards: torch.Tensor, *, adv_clip_max: float = 5.0, eps: float = 1e-6) -> torch.Tensor:
    """``clip((r − mean_batch r)/(std_batch r + eps), ±adv_clip_max)`` : ``(B,) -> (B,)``."""
    check_positive("adv_clip_max", adv_clip_max)
    adv, _ = group_normalize(rewards, group_size=rewards.shape[0] if rewards.dim() else 1, eps=eps)
    return adv.clamp(-adv_clip_max, adv_clip_max)


def check_step_inputs(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor) -> None:
    """``logprobs``/``old_logprobs (B, S)`` float and ``advantages (B,)``, else ValueError/TypeError."""
    check_tensor("logprobs", logprobs, ndim=2)
    check_tensor("old_logprobs", old_logprobs, ndim=2)
    check_tensor("advantages", advantages, ndim=1)
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(f"old_logprobs must have shape {tuple(logprobs.shape)}, got {tuple(old_logprobs.shape)}")
    if advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(f"advantages must have shape ({logprobs.shape[0]},), got {tuple(advantages.shape)}")
    if not torch.isfinite(advantages).all():
        raise ValueError("advantages must be finite")


def clipped_step_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float, adv_clip_max: float) -> tuple[torch.Tensor, dict]:
    """Per-step PPO-clip of DDPO/Flow-GRPO averaged over (B, S), with ``clip_frac`` and ``ratio_mean``."""
    check_step_inputs(logprobs, old_logprobs, advantages)
    check_positive("clip_range", clip_range)
    check_positive("adv_clip_max", adv_clip_max)
    adv = advantages.clamp(-adv_clip_max, adv_clip_max)
    rho = policy_ratio(logprobs, old_logprobs.detach())                      # (B, S)
    pg, regions = clipped_surrogate(rho, adv, clip_range, clip_range)
    clipped = (rho - 1).abs() > clip_range
    loss = pg.mean()
    return loss, {"loss": float(loss.detach()), "clip_frac": float(clipped.float().mean()),
                  "ratio_mean": float(rho.detach().mean()), "adv_mean": float(adv.mean()),
                  "adv_std": float(adv.std()) if adv.numel() > 1 else 0.0}


@register("flow_loss", "ddpo", paper="Training Diffusion Models with Reinforcement Learning",
          arxiv="2305.13301")
def ddpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
              clip_range: float = 1e-4, adv_clip_max: float = 5.0, mode: str = "is") -> tuple[torch.Tensor, dict]:
    """DDPO_IS (clipped ratio, ``mode="is"``) or DDPO_SF (REINFORCE, ``mode="sf"``) on per-step log-probs."""
    check_choice("mode", mode, ("is", "sf"))
    if mode == "is":
        return clipped_step_loss(logprobs, old_logprobs, advantages, clip_range, adv_clip_max)
    check_step_inputs(logprobs, old_logprobs, advantages)
    adv = advantages.clamp(-adv_clip_max, adv_clip_max)
    loss = -(adv[:, None] * logprobs).mean()
    return loss, {"loss": float(loss.detach()), "adv_mean": float(adv.mean())}


__all__ = ["ddpo_loss", "ddpo_advantages", "clipped_step_loss", "check_step_inputs"]
