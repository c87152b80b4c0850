"""PPO for language models: clipped surrogate, clipped value loss, and GAE advantages.

Paper: "Proximal Policy Optimization Algorithms", Schulman et al., arXiv 1707.06347; GAE from
"High-Dimensional Continuous Control Using Generalized Advantage Estimation", Schulman et al.,
arXiv 1506.02438; the RLHF form (one action per token, outcome reward on the last token) from
"Fine-Tuning Language Models from Human Preferences", Ziegler et al., arXiv 1909.08593.

The update: GAE (``advantage/gae``), per response, backwards over its valid tokens, V after the
last token = 0::

    δ_t = r_t + γ V_{t+1} − V_t,     Â_t = δ_t + γλ Â_{t+1},     R̂_t = Â_t + V_t   (returns)

where ``r_{i,t}`` are the ``token_rewards`` (the outcome reward on the last token, optionally minus
a per-token KL penalty), ``V = values`` the critic's predictions at sampling time, γ the discount
and λ the GAE weight; then Â is whitened over the valid tokens of the batch (``whiten=True``).
The returns R̂ are handed to the loss through the batch (the estimator's metrics carry the tensor
``returns``).

Loss (``policy_loss/ppo``), ρ_t = π_θ/π_old = exp(ℓ_t − ℓ^old_t) per token::

    pg_t = max(−Â_t ρ_t, −Â_t clip(ρ_t, 1−ε_low, 1+ε_high))        (dual clip: min(pg, −c Â) for Â<0)
    V^clip = V_old + clip(V − V_old, −ε_v, ε_v)
    L = agg(pg) + c_v · ½ agg(max((V − R̂)², (V^clip − R̂)²)) + β·agg(KL_est(ℓ, ℓ^ref))

where V is the critic being trained, V_old its values at sampling time, ε_v the value clip range,
c_v the value-loss weight, c the dual-clip constant, β the KL weight and ℓ^ref the reference
log-probs. Intuition: take the largest policy step whose ratio stays inside [1 − ε, 1 + ε], and
let the critic move only ε_v per update, both so that one batch cannot throw the policy far.

Where it departs from REINFORCE: a learned critic as baseline (GAE trades bias for variance with
λ), an importance ratio so that several epochs can reuse one batch, and clipping that removes the
gradient once the ratio leaves the trust region. It is the parent of GRPO, DAPO, GSPO and the
other clipped losses of ``lab.rl``.

Choices:
- Lab defaults: ε = 0.2, ε_v = 0.2, c_v = 0.1, γ = 1, λ = 0.95, whitening on, no dual clip, β = 0,
  ``agg="token_mean"``.
- A KL *loss* term uses k3 by default, as GRPO does: k1 as a loss term has zero expected gradient
  on-policy (E_π[∇ℓ] = 0), so it would not hold the policy near the reference. RLHF-PPO puts the
  KL penalty into the *reward* instead (``reward/kl_penalty``: k1, β = 0.05; in the loop
  ``policy_optimization(reward_shaping="kl_penalty")``).
- The PPO paper's entropy bonus ``− c_H·mean(H)`` is applied by the training loop for every loss
  alike (``policy_optimization(entropy_coef=...)``, as verl's ``entropy_coeff``).
- With no critic (``values=None``) only the policy part is used; ``values`` without ``returns``
  raises ValueError; ``old_values=None`` means V_old = V (no value clipping).
- Masks are assumed to be prefixes (the response tokens of a row are contiguous from position 0).
- The metric ``explained_variance`` = 1 − Var(R̂ − V)/Var(R̂) over valid tokens says how much of
  the returns the critic predicts (NaN when the returns do not vary).

The policy part is ``lab.rl.core.clipped_policy_loss``; masked means, variances and whitening are
``lab.rl.core``'s.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_positive, check_range, check_tensor
from lab.registry import register
from lab.rl.core import (
    GlobalNorm, advantage_metrics, aggregate, as_float, as_mask, check_detached, check_per_token,
    clipped_policy_loss, masked_mean, masked_var, masked_whiten,
)


@register("advantage", "gae", paper="High-Dimensional Continuous Control Using Generalized Advantage "
          "Estimation", arxiv="1506.02438")
def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95, whiten: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """Generalized advantage estimates (B, T); ``metrics["returns"]`` holds R̂ = Â + V (B, T)."""
    check_range("gamma", gamma, 0.0, 1.0)
    check_range("lam", lam, 0.0, 1.0)
    check_tensor("token_rewards", token_rewards, ndim=2, dtype_kind="float")
    m = as_mask(mask, as_float(token_rewards))
    # finite on valid tokens, 0 on padding (padding may hold NaN/-inf)
    r = check_per_token("token_rewards", token_rewards, tuple(m.shape), m)
    v = check_per_token("values", values.detach(), tuple(m.shape), m)
    B, T = r.shape
    advantages = torch.zeros_like(r)
    last = r.new_zeros(B)                                         # Â_{t+1}
    for t in reversed(range(T)):
        next_value = v[:, t + 1] if t + 1 < T else r.new_zeros(B)  # 0 after the end
        delta = r[:, t] + gamma * next_value - v[:, t]                          # δ_t
        last = (delta + gamma * lam * last) * m[:, t]                            # Â_t (0 on padding)
        advantages[:, t] = last
    returns = (advantages + v) * m                                               # R̂_t
    if whiten:
        advantages = masked_whiten(advantages, m)
    metrics = advantage_metrics(advantages, m)
    metrics["returns"] = returns
    metrics["returns_mean"] = float(masked_mean(returns, m))
    metrics["explained_variance"] = explained_variance(v, returns, m)
    return advantages, metrics


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 − Var(R̂ − V) / Var(R̂)`` over valid tokens: how much of the returns the critic predicts.

    1 for a perfect critic, 0 for one that predicts the mean return, negative for one worse than
    that; NaN when the returns do not vary (fewer than 2 valid tokens or all equal).
    """
    m = as_mask(mask, returns)
    var_returns = masked_var(returns, m, unbiased=False)
    if m.sum() < 2 or var_returns <= 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, m, unbiased=False) / var_returns)


@register("policy_loss", "ppo", paper="Proximal Policy Optimization Algorithms", arxiv="1707.06347")
def ppo(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
        mask: torch.Tensor, *, values: torch.Tensor | None = None, old_values: torch.Tensor | None = None,
        returns: torch.Tensor | None = None, ref_logprobs: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
        dual_clip: float | None = None, clip_eps_value: float = 0.2, vf_coef: float = 0.1,
        beta: float = 0.0, kl_estimator: str = "k3", agg: str = "token_mean", norm: GlobalNorm | None = None,
        return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """PPO-clip policy loss plus the clipped value loss (when ``values`` are given)."""
    loss, metrics = clipped_policy_loss(
        logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs, entropy=entropy,
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, dual_clip=dual_clip, beta=beta,
        kl_estimator=kl_estimator, agg=agg, norm=norm, return_per_token=return_per_token)
    if values is None:
        return loss, metrics
    check_positive("clip_eps_value", clip_eps_value)
    check_positive("vf_coef", vf_coef, allow_zero=True)
    if returns is None:
        raise ValueError("returns are required with values (use advantage/gae, which provides them)")
    shape = tuple(logprobs.shape)
    m = as_mask(mask, as_float(logprobs))
    values = check_per_token("values", values, shape, m)
    returns = check_per_token("returns", returns, shape, m)
    check_detached("returns", returns)
    old_values = values.detach() if old_values is None else check_per_token("old_values", old_values, shape, m)
    check_detached("old_values", old_values)
    # V^clip = V_old + clip(V − V_old, −ε_v, ε_v); loss = ½ max((V − R̂)², (V^clip − R̂)²)
    clipped = old_values + (values - old_values).clamp(-clip_eps_value, clip_eps_value)
    vf_unclipped, vf_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    value_loss = 0.5 * aggregate(torch.maximum(vf_unclipped, vf_clipped), m, agg, norm)
    loss = loss + vf_coef * value_loss
    metrics.update(loss=float(loss.detach()), value_loss=float(value_loss.detach()),
                   value_clip_frac=float(masked_mean((vf_clipped > vf_unclipped).float(), m)),
                   value_mean=float(masked_mean(values.detach(), m)))
    return loss, metrics
