"""B²-DiffuRL: backward progressive training and branch-based sampling for sparse rewards.

"Towards Better Alignment: Training Diffusion Models with Reinforcement Learning Against Sparse
Rewards" (Hu et al., CVPR 2025, arXiv 2503.11240). With a sparse, terminal reward (success or not)
DDPO credits every one of the S denoising steps with the same advantage, most groups are all-0
and the signal is tiny. Two fixes, both compatible with DDPO / Flow-GRPO losses:

- **Backward progressive training.** Split the S steps into ``n_stages`` intervals from the end
  (data side). Stage 1 trains only the last interval; stage k trains the last k intervals
  (:func:`window_steps`), until all steps are trained. Late steps are easy to credit; earlier ones
  are added once the later policy is good.
- **Branch-based sampling.** For the current window, P prefixes are sampled deterministically up to
  the window start, then each is branched into M stochastic continuations through the window.
  Branches of one prefix differ only in the trained steps, so the within-branch relative advantage

      A_i = r_i − mean_{branch(i)} r

  attributes reward differences to exactly those steps (:func:`lab.rl.core.group_normalize` with
  the branch as group and ``std="none"``). The loss is the DDPO clipped surrogate over the window.

Concrete reading [unverified in detail; spec C.9]: intervals of equal length, cumulative windows,
un-normalised (mean-centred) branch advantages, steps outside the window deterministic (ODE).
"""
from __future__ import annotations

import math

import torch

from lab.checks import check_int, check_positive, check_tensor
from lab.flow.ddpo import clipped_step_loss
from lab.registry import register
from lab.rl.core import group_normalize


def window_steps(stage: int, n_steps: int, n_stages: int, *,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``(S,)`` bool: the last ``ceil(stage·S/n_stages)`` steps (stage in 1..n_stages)."""
    check_int("n_steps", n_steps, minimum=1)
    check_int("n_stages", n_stages, minimum=1)
    check_int("stage", stage, minimum=1)
    if stage > n_stages:
        raise ValueError(f"stage must be <= n_stages={n_stages}, got {stage}")
    length = math.ceil(stage * n_steps / n_stages)
    return torch.arange(n_steps, device=device) >= n_steps - length


def branch_advantages(rewards: torch.Tensor, branch_ids: torch.Tensor, *,
                      adv_clip_max: float = 5.0) -> torch.Tensor:
    """``A_i = r_i − mean_{branch(i)} r`` clipped to ±``adv_clip_max`` : ``(B,) -> (B,)``."""
    check_positive("adv_clip_max", adv_clip_max)
    adv, _ = group_normalize(rewards, group_ids=branch_ids, std="none")
    return adv.clamp(-adv_clip_max, adv_clip_max)


@register("flow_loss", "b2_diffurl",
          paper="Towards Better Alignment: Training Diffusion Models with Reinforcement Learning "
                "Against Sparse Rewards", arxiv="2503.11240")
def b2_diffurl_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, rewards: torch.Tensor,
                    branch_ids: torch.Tensor, *, clip_range: float = 1e-4,
                    adv_clip_max: float = 5.0) -> tuple[torch.Tensor, dict]:
    """DDPO clip loss on the window's per-step log-probs ``(B, K)`` with branch-relative advantages."""
    check_tensor("rewards", rewards, ndim=1)
    adv = branch_advantages(rewards, branch_ids, adv_clip_max=adv_clip_max)
    loss, metrics = clipped_step_loss(logprobs, old_logprobs, adv, clip_range, adv_clip_max)
    metrics["informative_frac"] = float((adv != 0).float().mean())
    return loss, metrics


__all__ = ["b2_diffurl_loss", "window_steps", "branch_advantages"]
