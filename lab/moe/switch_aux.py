"""Switch / GShard auxiliary load-balancing loss: penalise routers that send many tokens to one expert.

Paper: "Switch Transformers: Scaling to Trillion Parameter Models with Simple and Efficient
Sparsity", Fedus et al., arXiv 2101.03961 (eqs. 4-6); GShard ("GShard: Scaling Giant Models with
Conditional Computation and Automatic Sharding", Lepikhin et al., arXiv 2006.16668) uses the same
``f * P`` product. In the catalog it is the baseline of "A Theoretical Framework for
Auxiliary-Loss-Free Load Balancing of Sparse Mixture-of-Experts in Large-Scale AI Models".

The loss: over T tokens routed to E experts with softmax probabilities ``p_t = softmax(h_t)`` and
top-k choices S_t::

    f_i   = (1/T) sum_t 1[i in S_t]          fraction of tokens dispatched to expert i (sum_i f_i = k)
    P_i   = (1/T) sum_t p_{t,i}              mean router probability of expert i
    L_aux = alpha * E * sum_i f_i * P_i

where ``h_t`` are token t's router logits and alpha = ``coef`` (Switch: 1e-2; Hugging Face's
``router_aux_loss_coef`` for Mixtral and Qwen-MoE configs: 1e-3). Intuition: f is a count, so the
gradient flows through P only: the loss lowers the probability of experts that receive many
tokens. Under uniform routing (f_i = k/E, P_i = 1/E) ``L_aux = alpha * k``, which is also its
minimum over P for fixed uniform f; for k = 1 this is Switch's balanced value alpha.

Where it departs from the Switch aux loss: it is the parent — of the sequence-wise loss
(``seq_aux``, the same product per sequence) and the baseline that loss-free balancing
(``aux_free_bias``) and StochasticBalance (``stochastic_balance``) replace by a selection bias.

Choices:
- Several MoE layers are **pooled**, as Hugging Face does (Mixtral, Qwen2-MoE, Qwen3-MoE
  ``load_balancing_loss_func``): the layers' tokens count as one batch of ``n_layers * T`` tokens,
  so f and P are means over all layers and tokens and there is one ``E * sum_i f_i P_i`` (not one per
  layer, not a sum over layers). Pass the layers stacked on a leading axis, ``router_logits (L, ...,
  E)`` and ``indices (L, ..., k)``: every axis in front of the expert axis counts as tokens. This is
  what makes ``router_aux_loss_coef`` values from Hugging Face configs transfer (tested against
  ``load_balancing_loss_func`` with several layers).
- ``indices`` are the router's actual choices (possibly a biased or group-limited selection, see
  :class:`lab.moe.router.TopKRouter`), so f counts the real dispatch; Hugging Face recomputes
  ``TopK(softmax(h))``, which is the same thing for an unbiased softmax router.
- ``attention_mask`` (1 = real token) drops padding from both means and broadcasts over the leading
  layer axis.
- A batch with no (unmasked) token gives a loss of exactly 0 with a zero gradient (Hugging Face
  divides by zero and returns NaN): nothing was routed, so nothing is out of balance.

On a Hugging Face MoE model, :func:`lab.moe.hf.attach` (``"switch_aux"``) stacks the layers' logits
and hands them to this loss once per forward; given by name without a ``coef`` it takes the model's
``config.router_aux_loss_coef``.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_nonneg
from lab.moe.router import check_routing, token_mask
from lab.registry import register


def dispatch_fraction(indices: torch.Tensor, n_experts: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``f_i``: fraction of (unmasked) tokens with expert i among their choices, shape (E,); zeros
    when there is no token."""
    per_token = torch.zeros(*indices.shape[:-1], n_experts, dtype=torch.get_default_dtype(), device=indices.device)
    per_token.scatter_add_(-1, indices, torch.ones_like(indices, dtype=per_token.dtype))  # (..., E) slots
    per_token = per_token.reshape(-1, n_experts)  # (T, E)
    if mask is None:
        return per_token.sum(0) / max(per_token.shape[0], 1)
    m = mask.reshape(-1, 1).to(per_token)
    return (per_token * m).sum(0) / m.sum().clamp_min(1.0)


def switch_aux_loss(router_logits: torch.Tensor, indices: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``E * sum_i f_i P_i`` (no coefficient) and the stats ``f`` and ``P``.

    Args:
        router_logits: (..., E) logits h of all tokens; stacked layers (L, ..., E) are pooled.
        indices: (..., k) chosen experts of each token.
        attention_mask: optional mask of the token shape or a suffix of it, 1 = real token.
    """
    e = check_routing(router_logits, indices, None)
    mask = token_mask(attention_mask, router_logits.shape[:-1], router_logits)  # (...) or None
    probs = router_logits.softmax(-1).reshape(-1, e)  # (T, E)
    # T (unmasked tokens); with no token at all f = P = 0 and the loss is exactly 0 (no host sync)
    n_tokens = (probs.new_tensor(float(probs.shape[0])) if mask is None else mask.sum()).clamp_min(1.0)
    # f_i = (1/T) sum_t 1[i in S_t]    (no gradient: a count)
    f = dispatch_fraction(indices, e, mask).to(probs)  # (E,)
    # P_i = (1/T) sum_t p_{t,i}
    p_mean = (probs if mask is None else probs * mask.reshape(-1, 1)).sum(0) / n_tokens  # (E,)
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
        coef: alpha, the loss coefficient (Switch: 1e-2; Hugging Face's ``router_aux_loss_coef``
            for Mixtral and Qwen-MoE configs: 1e-3).
    """

    def __init__(self, n_experts: int, *, coef: float = 1e-2):
        self.n_experts = check_int("n_experts", n_experts, minimum=1)
        self.coef = check_nonneg("coef", coef)

    def loss(self, router_logits: torch.Tensor, indices: torch.Tensor,
             attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """``coef * E sum_i f_i P_i`` over every token in front of the expert axis (layers pooled)."""
        check_routing(router_logits, indices, self.n_experts)
        raw, stats = switch_aux_loss(router_logits, indices, attention_mask)
        return self.coef * raw, {**stats, "switch_aux": raw.detach()}

    def __repr__(self) -> str:
        return f"SwitchAux(n_experts={self.n_experts}, coef={self.coef})"


__all__ = ["SwitchAux", "dispatch_fraction", "switch_aux_loss"]
