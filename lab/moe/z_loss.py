"""Router z-loss: keep the router logits small.

"ST-MoE: Designing Stable and Transferable Sparse Expert Models" (arXiv 2202.08906). Over T tokens
with router logits ``h_t`` (E per token)::

    L_z = c_z * (1/T) sum_t ( log sum_j exp h_{t,j} )^2

Intuition: large logits overflow in low precision and make the softmax router brittle; the squared
log-partition penalizes their overall scale while leaving the softmax probabilities almost free
(adding a constant to every logit of a token changes L_z but not p_t). It does not balance load by
itself: it is the usual companion of the Switch auxiliary loss (ST-MoE: c_z = 1e-3 with the
auxiliary loss at 1e-2). Same value as Hugging Face's Switch Transformers ``router_z_loss_func``.
The ``indices`` argument is accepted for the balancer contract and only checked.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_nonneg
from lab.moe.router import check_routing
from lab.registry import register


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """``(1/T) sum_t logsumexp(h_t)^2`` over every token in front of the expert axis."""
    # (log sum_j exp h_{t,j})^2, averaged over tokens
    lse = torch.logsumexp(router_logits, dim=-1)  # (...)
    return lse.pow(2).mean()


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

    def loss(self, router_logits: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        check_routing(router_logits, indices, self.n_experts)
        raw = router_z_loss(router_logits)
        return self.coef * raw, {"z_loss": raw.detach(), "logit_abs_mean": router_logits.detach().abs().mean()}

    def __repr__(self) -> str:
        return f"ZLoss(n_experts={self.n_experts}, coef={self.coef})"


__all__ = ["ZLoss", "router_z_loss"]
