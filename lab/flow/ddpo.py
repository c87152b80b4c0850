"""DDPO: each denoising step of a stochastic sampler is an action of an MDP, trained by PPO or REINFORCE.

Paper: "Training Diffusion Models with Reinforcement Learning", Black et al., arXiv 2305.13301
(reference code: kvablack/ddpo-pytorch).

The loss: state ``(x_j, σ_j)``, action ``x_{j+1}``, policy one sampler step
``π_θ(x_{j+1} | x_j) = N(μ_θ(x_j), s_j² I)``, reward ``r(x_S)`` only at the end. DDPO_IS
(``mode="is"``) is PPO's clipped surrogate averaged over samples i and trained steps j,

    L(θ) = mean_{i,j} max(−A_i ρ_ij, −A_i clip(ρ_ij, 1 − ε_c, 1 + ε_c)),

and DDPO_SF (``mode="sf"``) is REINFORCE, ``L = −mean_{i,j} A_i log π_θ(x_{j+1} | x_j)``, where
``A_i = clip((r_i − mean_B r)/(std_B r + 1e-6), ±adv_clip_max)`` is the batch-normalised reward of
sample i (B samples, ``adv_clip_max`` = 5), ``ρ_ij = exp(log π_θ − log π_old)`` the per-step ratio
to the sampling policy and ``ε_c`` = ``clip_range`` = 1e-4. Intuition: every step of a sample
that scored above the batch average is made more likely, by the same amount.

Where it departs from PPO: no value function and no per-step reward — one terminal advantage is
shared by all steps of a trajectory; the "tokens" are Gaussian denoising steps. It is the parent
of Flow-GRPO (``flow_grpo``), B²-DiffuRL (``b2_diffurl``) and AWM (``awm``).

Choices:
- The policy is the marginal-preserving Euler–Maruyama step of :mod:`lab.flow.core` on the lab's
  flow toy (the paper: a DDIM(η = 1) step), as spec C.3 asks.
- The toy is unconditional, so the whole batch is one group (:func:`lab.rl.core.group_normalize`
  with ``group_size = B``) instead of the paper's per-prompt running tracker; equal rewards give
  zero advantages.
- Log-probs are means over the coordinates (as in ddpo-pytorch), so ``ε_c = 1e-4`` is a very tight
  trust region: the first update of a rollout is exactly on-policy (ρ = 1) and the clip only acts
  on later minibatches/epochs.
- The loss clips the advantages it is given to ±``adv_clip_max`` again (so advantages from
  elsewhere are bounded too); DDPO_SF uses the same clipped advantages.
- The clipped surrogate and the ratio come from :mod:`lab.rl.core`, as for every lab policy loss.
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
