"""SFT: maximum likelihood on demonstrations (the negative log-likelihood of the response tokens).

Paper: "Implicit Reward as the Bridge: A Unified View of SFT and DPO Connections", Wang et al.,
arXiv 2507.00018 (the catalog source), which reads SFT as implicit-reward learning (see
:mod:`lab.preference.fdiv_sft`).

The loss: for B demonstrations with token log-probs ℓ_{i,t} = log π_θ(y_{i,t} | x_i, y_{i,<t}) and
the response mask m_{i,t} (prompt tokens masked out, "completion-only" training), L_i = Σ_t m_{i,t}::

    token_mean            L = −Σ_{i,t} m ℓ / Σ_{i,t} m                 (TRL SFTTrainer, HPT)
    seq_mean_token_mean   L = −(1/B) Σ_i (1/L_i) Σ_t m ℓ               (GRAO's J_SFT)
    seq_mean_token_sum    L = −(1/B) Σ_i Σ_t m ℓ                       (= −mean S, the sequence NLL)

Intuition: in the implicit-reward view, minimizing −mean S maximizes the implicit reward
β(S − S^ref) of the demonstrations, as the reference term is constant in θ.

Where it departs from DPO: it is the baseline, not a variant — one response per prompt, no rejected
response and no reference. It is the parent of the SFT terms of HPT and GRAO and of
:mod:`lab.preference.fdiv_sft`.

Choices:
- The token aggregation is :func:`lab.rl.core.aggregate` (``agg``), default ``token_mean`` (TRL).
  The modes differ when lengths differ: ℓ = [[−1, −2], [−3, pad]] gives 2.0 (token mean) and 2.25
  (sequence mean).
- An empty mask gives 0 with the graph kept; padded positions may hold anything and are replaced
  by 0.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_tensor
from lab.registry import register
from lab.rl.core import aggregate, as_float, as_mask, masked_mean, valid_values


@register("preference_loss", "sft", paper="Implicit Reward as the Bridge: A Unified View of SFT and DPO "
          "Connections", arxiv="2507.00018")
def sft(logprobs: torch.Tensor, mask: torch.Tensor, *, agg: str = "token_mean") -> tuple[torch.Tensor, dict[str, Any]]:
    """Negative log-likelihood of the masked tokens, aggregated by ``agg``."""
    check_tensor("logprobs", logprobs, ndim=2, dtype_kind="float")
    logprobs = as_float(logprobs)
    mask_f = as_mask(mask, logprobs)
    logprobs = valid_values("logprobs", logprobs, mask_f)                      # padding -> 0
    # L = agg(−ℓ)
    loss = aggregate(-logprobs, mask_f, agg)
    lengths = mask_f.sum(-1)
    return loss, {"loss": float(loss.detach()), "nll": float(masked_mean(-logprobs.detach(), mask_f)),
                  "num_tokens": float(lengths.sum()), "num_seqs": float((lengths > 0).sum())}
