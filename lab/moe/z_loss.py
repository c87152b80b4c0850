"""Router z-loss: keep the router logits small.

Paper: "ST-MoE: Designing Stable and Transferable Sparse Expert Models", Zoph et al.,
arXiv 2202.08906.

The loss: over T tokens with router logits ``h_t`` (E per token)::

    L_z = c_z * (1/T) sum_t ( log sum_j exp h_{t,j} )^2

where ``h_{t,j}`` is token t's logit for expert j and c_z = ``coef`` (ST-MoE: 1e-3, with the
auxiliary loss at 1e-2). Intuition: large logits overflow in low precision and make the softmax
router brittle; the squared log-partition penalises their overall scale while leaving the softmax
probabilities almost free (adding a constant to every logit of a token changes L_z but not p_t).

Where it departs from the Switch aux loss: it does not balance load by itself — it acts on the
scale of the logits, not on who gets the tokens — and is the usual companion of ``switch_aux``.

Choices:
- Same value as Hugging Face's Switch Transformers ``router_z_loss_func``, including how it pools
  several layers: Hugging Face concatenates the layers' tokens, so stacked ``(L, ..., E)`` logits
  give the mean over all layers' tokens (:func:`lab.moe.hf.attach` with ``"z_loss"`` does this on a
  Hugging Face MoE model).
- ``attention_mask`` (1 = real token, an addition of the lab) excludes padding; a batch with no
  (unmasked) token gives exactly 0.
- The ``indices`` argument is accepted for the balancer contract and only checked.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_nonneg
from lab.moe.router import check_routing, token_mask
from lab.registry import register


def router_z_loss(router_logits: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(1/T) sum_t logsumexp(h_t)^2`` over every (unmasked) token in front of the expert axis; 0
    for no token."""
    # (log sum_j exp h_{t,j})^2, averaged over tokens
    z2 = torch.logsumexp(router_logits, dim=-1).pow(2)  # (...)
    mask = token_mask(attention_mask, router_logits.shape[:-1], z2)
    if mask is None:
        return z2.sum() / max(z2.numel(), 1)
    return (z2 * mask).sum() / mask.sum().clamp_min(1.0)


@register("balancer", "z_loss", paper="ST-MoE: Designing Stable and Transferable Sparse Expert Models",
          arxiv="2202.08906", summary="Router z-loss c_z * mean_t logsumexp(h_t)^2")
class ZLoss:
    """Router z-loss ``coef * mean_t logsumexp(h_t)^2``.

    Args:
        n_experts: E, checked against the router logits.
        coef: c_z, the loss coefficient (ST-MoE: 1e-3).
    """

    def __init__(self, n_experts: int, *, coef: float = 1e-3):
        self.n_experts = check_int("n_experts", n_experts, minimum=1)
        self.coef = check_nonneg("coef", coef)

    def loss(self, router_logits: torch.Tensor, indices: torch.Tensor,
             attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """``coef * mean_t logsumexp(h_t)^2`` over every token in front of the expert axis (layers pooled)."""
        check_routing(router_logits, indices, self.n_experts)
        raw = router_z_loss(router_logits, attention_mask)
        abs_mean = router_logits.detach().abs().sum() / max(router_logits.numel(), 1)
        return self.coef * raw, {"z_loss": raw.detach(), "logit_abs_mean": abs_mean}

    def __repr__(self) -> str:
        return f"ZLoss(n_experts={self.n_experts}, coef={self.coef})"


__all__ = ["ZLoss", "router_z_loss"]
