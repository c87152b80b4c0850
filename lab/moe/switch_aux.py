"""Switch / GShard auxiliary load-balancing loss.

"Switch Transformers: Scaling to Trillion Parameter Models with Simple and Efficient Sparsity"
(arXiv 2101.03961, eqs. 4-6); GShard (arXiv 2006.16668) uses the same ``f * P`` product. Over T
tokens routed to E experts with softmax probabilities ``p_t = softmax(h_t)`` and top-k choices S_t::

    f_i   = (1/T) sum_t 1[i in S_t]          fraction of tokens dispatched to expert i (sum_i f_i = k)
    P_i   = (1/T) sum_t p_{t,i}              mean router probability of expert i
    L_aux = alpha * E * sum_i f_i * P_i

f is a count, so the gradient flows through P only: the loss lowers the probability of experts
that receive many tokens. Under uniform routing (f_i = k/E, P_i = 1/E) ``L_aux = alpha * k``, which
is also its minimum over P for fixed uniform f; for k = 1 this is Switch's balanced value alpha.

Exactly the ``E * sum_i f_i P_i`` of Hugging Face's Mixtral ``load_balancing_loss_func`` for one
layer (its f counts every top-k slot, as here); ``attention_mask`` drops padding tokens from both
means. Departure: a model with several MoE layers adds one loss per layer (Switch) instead of
pooling the layers' tokens into one f and P (the Hugging Face helper). The ``indices`` come from the
router (possibly biased selection), so f counts the actual dispatch.

Registered as ``balancer/switch_aux``; in the catalog it is the baseline of "A Theoretical Framework
for Auxiliary-Loss-Free Load Balancing of Sparse Mixture-of-Experts in Large-Scale AI Models".
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_nonneg, check_tensor
from lab.moe.router import check_routing
from lab.registry import register


def dispatch_fraction(indices: torch.Tensor, n_experts: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``f_i``: fraction of (unmasked) tokens with expert i among their choices, shape (E,)."""
    one_hot = torch.nn.functional.one_hot(indices, n_experts).to(torch.get_default_dtype())  # (..., k, E)
    per_token = one_hot.sum(-2)  # (..., E)
    if mask is None:
        return per_token.reshape(-1, n_experts).mean(0)
    m = mask.reshape(-1, 1).to(per_token)
    return (per_token.reshape(-1, n_experts) * m).sum(0) / m.sum().clamp_min(1.0)


def switch_aux_loss(router_logits: torch.Tensor, indices: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``E * sum_i f_i P_i`` (no coefficient) and the stats ``f`` and ``P``.

    Args:
        router_logits: (..., E) logits h of all tokens.
        indices: (..., k) chosen experts of each token.
        attention_mask: optional (...) mask, 1 = real token, 0 = padding.
    """
    e = check_routing(router_logits, indices, None)
    mask = None
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask)
        if attention_mask.shape != router_logits.shape[:-1]:
            raise ValueError(f"attention_mask must have shape {tuple(router_logits.shape[:-1])}, "
                             f"got {tuple(attention_mask.shape)}")
        mask = attention_mask
    probs = router_logits.softmax(-1).reshape(-1, e)  # (T, E)
    # f_i = (1/T) sum_t 1[i in S_t]    (no gradient: a count)
    f = dispatch_fraction(indices, e, mask).to(probs)  # (E,)
    # P_i = (1/T) sum_t p_{t,i}
    if mask is None:
        p_mean = probs.mean(0)  # (E,)
    else:
        m = mask.reshape(-1, 1).to(probs)
        p_mean = (probs * m).sum(0) / m.sum().clamp_min(1.0)
    # E * sum_i f_i P_i
    loss = e * (f * p_mean).sum()
    return loss, {"f": f.detach(), "P": p_mean.detach()}


@register("balancer", "switch_aux", paper="Switch Transformers: Scaling to Trillion Parameter Models with "
          "Simple and Efficient Sparsity", arxiv="2101.03961",
          summary="Switch/GShard auxiliary loss alpha * E * sum_i f_i P_i")
class SwitchAux:
    """Switch/GShard auxiliary load-balancing loss ``coef * E * sum_i f_i P_i``.

    Args:
        n_experts: E, checked against the router logits.
        coef: alpha, the loss coefficient (Switch: 1e-2).
    """

    def __init__(self, n_experts: int, *, coef: float = 1e-2):
        self.n_experts = check_int("n_experts", n_experts, minimum=1)
        self.coef = check_nonneg("coef", coef)

    def loss(self, router_logits: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        check_routing(router_logits, indices, self.n_experts)
        raw, stats = switch_aux_loss(router_logits, indices)
        return self.coef * raw, {**stats, "switch_aux": raw.detach()}

    def __repr__(self) -> str:
        return f"SwitchAux(n_experts={self.n_experts}, coef={self.coef})"


__all__ = ["SwitchAux", "dispatch_fraction", "switch_aux_loss"]
