"""GSPO: clip a sequence-level, length-normalized importance ratio.

Paper: "Group Sequence Policy Optimization", Zheng et al., arXiv 2507.18071.

The loss: GRPO's per-token ratio ρ_{i,t} is a noisy one-sample importance weight, while the reward
belongs to the whole sequence. GSPO uses the geometric mean of the token ratios of response i::

    s_i = (π_θ(y_i|x) / π_old(y_i|x))^{1/|y_i|} = exp( (1/|y_i|) Σ_t m_{i,t} (ℓ_{i,t} − ℓ^old_{i,t}) )
    L   = −(1/G) Σ_i min( s_i A_i, clip(s_i, 1−ε_low, 1+ε_high) A_i )

where y_i is response i to prompt x, |y_i| its number of valid tokens, m the response mask,
ℓ, ℓ^old the current and sampling log-probs, A_i the (group-normalized) advantage, G the number of
responses, with the tiny clip range of the paper (ε_low = 3e-4, ε_high = 4e-4) and β = 0.
Intuition: one ratio per answer, matching one reward per answer, so a single odd token can
neither clip nor inflate the whole update.

Where it departs from GRPO: the ratio, and therefore the clipping, is per sequence and
length-normalized instead of per token; the clip range is three orders of magnitude smaller; no KL.
Fully on-policy, s_i = 1 and the gradient equals GRPO's.

Choices:
- Implemented in the GSPO-token form ``s_{i,t} = sg[s_i] · exp(ℓ_{i,t} − sg[ℓ_{i,t}])`` (value s_i at
  every token, gradient of a token term) fed to ``lab.rl.core.clipped_policy_loss`` with
  ``agg="seq_mean_token_mean"``: for (B,) advantages this is exactly the sequence objective above
  (same value, same gradient), and it also accepts token-level advantages (B, T).
- log s_i is clamped to ≤ 10 (verl), so a far off-policy sequence gives a finite ratio e^10.
- ``ratio_*`` metrics are over the sequence ratios s_i; clip fractions are over tokens (all
  tokens of a clipped sequence count).
- β = 0 by default; ``beta > 0`` adds a k3 KL loss term as GRPO's.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.registry import register
from lab.rl.core import GlobalNorm, clipped_policy_loss, prepare_policy_inputs, sequence_logprobs


@register("policy_loss", "gspo", paper="Group Sequence Policy Optimization", arxiv="2507.18071")
def gspo(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
         mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
         clip_eps_low: float = 3e-4, clip_eps_high: float = 4e-4, beta: float = 0.0, kl_estimator: str = "k3",
         norm: GlobalNorm | None = None, return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sequence-ratio clipped loss (GSPO-token form); see the module docstring."""
    logprobs, mask_f, advantages, old_logprobs = prepare_policy_inputs(logprobs, old_logprobs, advantages, mask)
    # log s_i = mean_t m (ℓ − ℓ_old), clamped above at 10                    (B,)
    log_s = sequence_logprobs(logprobs - old_logprobs, mask_f, normalize=True).clamp(max=10.0)
    # s_{i,t} = sg[s_i]·exp(ℓ − sg[ℓ]): value s_i, gradient of ℓ_{i,t}; as log-probs for the core loss
    shifted_old = logprobs.detach() - log_s.detach()[:, None]
    loss, metrics = clipped_policy_loss(logprobs, shifted_old, advantages, mask_f, ref_logprobs=ref_logprobs,
                                        entropy=entropy, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
                                        beta=beta, kl_estimator=kl_estimator, agg="seq_mean_token_mean",
                                        norm=norm, return_per_token=return_per_token)
    valid = mask_f.sum(-1) > 0
    s = log_s.detach().exp()[valid]
    metrics.update(ratio_mean=float(s.mean()) if len(s) else 1.0, ratio_min=float(s.min()) if len(s) else 1.0,
                   ratio_max=float(s.max()) if len(s) else 1.0,
                   kl_old=float(-log_s.detach()[valid].mean()) if len(s) else 0.0)
    return loss, metrics
