"""T-PPO: PPO on truncated windows, with the value model trained on finished responses only.

Paper: "Truncated Proximal Policy Optimization", Fan et al., arXiv 2506.15050 (no public code).

T-PPO generates in fixed windows and updates the policy on the tokens generated so far, finished
or not, with advantages from EGAE (``advantage/egae``).

The loss: policy and value are optimized independently, each on its own tokens (ρ = π_θ/π_old,
Â the EGAE advantages, V the critic, V_old its sampling-time values, V^clip = V_old +
clip(V − V_old, −ε_v, ε_v), R̂ the EGAE returns, m the token mask):

    policy   L_pg = agg_{m^win}( max(−ρÂ, −clip(ρ, 1−ε_low, 1+ε_high)Â) )
             m^win_{i,t} = m_{i,t}·1[t < window]        (prompt and out-of-window tokens filtered)
    value    L_v  = ½·agg_{m^fin}( max((V − R̂)², (V^clip − R̂)²) ),
             m^fin_{i,t} = m_{i,t}·1[response i finished]   (its return is a real Monte Carlo one)
    L = L_pg + c_v·L_v   (+ β·agg(KL) when a reference is given)

Where it departs from PPO: PPO trains policy and value on the same complete responses; T-PPO
trains the policy on partial ones (whose advantages EGAE bootstraps) but keeps the critic's
targets unbiased by fitting it only where the episode ended.

Choices ([unverified]: the paper's window length and loss details come from a summary):
``window=None`` keeps every valid token (then, with all rows finished, T-PPO is PPO);
``is_finished=None`` means every row finished; the policy and value parts are the two halves of
``policy_loss/ppo`` (the value half is ``ppo`` with zero advantages on the finished tokens, which
contributes exactly c_v·L_v); PPO's defaults ε = 0.2, ε_v = 0.2, c_v = 0.1, and, like PPO and
GRPO, the k3 estimator for a KL loss term (β > 0): k1 = ℓ − ℓ^ref as a loss term has zero expected
gradient on-policy (E_π[∇ℓ] = 0) and would not hold the policy near the reference. In
``policy_optimization`` (``advantage="egae", loss="tppo"``) it reproduces PPO + GAE step for step.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_tensor
from lab.registry import register
from lab.rl.core import GlobalNorm, as_mask
from lab.rl.ppo import ppo

PAPER = "Truncated Proximal Policy Optimization"


def window_mask(mask: torch.Tensor, window: int | None) -> torch.Tensor:
    """``mask ∧ (t < window)``: the tokens generated in the first ``window`` steps."""
    if window is None:
        return mask
    window = check_int("window", window, minimum=1)
    return mask * (torch.arange(mask.shape[1], device=mask.device) < window).to(mask.dtype)[None, :]


@register("policy_loss", "tppo", paper=PAPER, arxiv="2506.15050",
          summary="T-PPO: PPO-clip on the window's tokens, value loss on finished responses only")
def tppo(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
         mask: torch.Tensor, *, values: torch.Tensor | None = None,
         old_values: torch.Tensor | None = None, returns: torch.Tensor | None = None,
         is_finished: torch.Tensor | None = None, window: int | None = None,
         ref_logprobs: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
         clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, dual_clip: float | None = None,
         clip_eps_value: float = 0.2, vf_coef: float = 0.1, beta: float = 0.0,
         kl_estimator: str = "k3", agg: str = "token_mean", norm: GlobalNorm | None = None,
         return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """``L = L_pg(window tokens) + c_v·L_v(finished responses)``; arguments as ``policy_loss/ppo``
    plus ``is_finished`` (B,) bool and ``window`` (policy tokens t < window)."""
    mask_f = as_mask(mask, logprobs)
    policy_mask = window_mask(mask_f, window)
    loss, metrics = ppo(logprobs, old_logprobs, advantages, policy_mask, ref_logprobs=ref_logprobs,
                        entropy=entropy, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
                        dual_clip=dual_clip, beta=beta, kl_estimator=kl_estimator, agg=agg,
                        norm=norm, return_per_token=return_per_token)
    if values is None:
        return loss, metrics
    if is_finished is None:
        finished = torch.ones(mask_f.shape[0], dtype=torch.bool, device=mask_f.device)
    else:
        check_tensor("is_finished", is_finished, shape=(mask_f.shape[0],))
        finished = is_finished.bool()
    value_mask = mask_f * finished[:, None].to(mask_f.dtype)                    # (B, T)
    # the value half of PPO: zero advantages make its policy term exactly 0
    value_part, value_metrics = ppo(logprobs.detach(), None, mask_f.new_zeros(mask_f.shape[0]), value_mask,
                                    values=values, old_values=old_values, returns=returns,
                                    clip_eps_value=clip_eps_value, vf_coef=vf_coef, agg=agg,
                                    norm=norm)
    loss = loss + value_part
    metrics.update(loss=float(loss.detach()), value_loss=value_metrics["value_loss"],
                   value_clip_frac=value_metrics["value_clip_frac"],
                   value_mean=value_metrics["value_mean"],
                   **{"tppo/finished_frac": float(finished.to(torch.float32).mean()),
                      "tppo/window_frac": float(policy_mask.sum() / mask_f.sum().clamp_min(1.0))})
    return loss, metrics


__all__ = ["tppo", "window_mask"]
