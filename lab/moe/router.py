"""Top-k token-choice routing: each token picks k of E experts, with an optional balancer.

Router logits ``h_t = W_r x_t`` (``W_r`` is ``E x d``), scores ``s_t = softmax(h_t)`` (Switch,
Mixtral) or ``s_t = sigmoid(h_t)`` (DeepSeek-V3). Selection and gate weights::

    S_t     = TopK_i (s_{t,i} + b_i)                      # b = balancer bias, 0 without one
    g_{t,i} = s_{t,i} / sum_{j in S_t} s_{t,j}   (i in S_t, norm_topk)   or   s_{t,i}  (raw)

The bias ``b`` chooses experts only; the gate weights always come from the *unbiased* scores
("Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts", arXiv 2408.15664;
"DeepSeek-V3 Technical Report", arXiv 2412.19437). Load ``A_i = #{(t, j): S_t[j] = i}`` counts
(token, slot) assignments, so ``sum_i A_i = kT`` and the balanced target is ``L = kT / E``.

A balancer (registry kind ``balancer``) is one of two things:

- a **loss**: ``balancer.loss(router_logits, indices) -> (aux_loss, stats)`` (switch_aux,
  z_loss, seq_aux); the router returns ``aux_loss`` for the trainer to add to the main loss;
- a **bias controller**: ``balancer.selection(scores)`` gives the scores used to *choose*
  experts (``s + b`` for aux_free_bias, ``s * psi(load)`` for stochastic_balance; its per-expert
  price is ``balancer.bias``), and ``balancer.update(load) -> stats`` is called by the trainer after
  each optimizer step; the router's ``aux_loss`` is then exactly zero.

Choices where papers differ: the default ``norm_topk`` renormalizes the gates over the chosen
experts when k > 1 (Mixtral, DeepSeek-V3) and keeps the raw probability when k = 1 (Switch: a
renormalized single gate would be 1 and pass no gradient to the router).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lab.checks import check_choice, check_int, check_tensor
from lab.moe.metrics import expert_load

SCORE_FNS = ("softmax", "sigmoid")


@dataclass
class RouterOutput:
    """What a router returns for a batch of tokens with leading shape ``B...``."""

    indices: torch.Tensor  # (B..., k) chosen experts, int64
    gates: torch.Tensor  # (B..., k) gate weights from the unbiased scores
    logits: torch.Tensor  # (B..., E) router logits h
    scores: torch.Tensor  # (B..., E) softmax or sigmoid of the logits
    load: torch.Tensor  # (E,) float counts of (token, slot) assignments per expert
    aux_loss: torch.Tensor  # scalar; exactly 0 for bias controllers and no balancer
    stats: dict[str, Any] = field(default_factory=dict)  # the balancer's stats
    dropped: torch.Tensor | None = None  # (B..., k) True where a capacity limit dropped the slot


def is_controller(balancer: Any) -> bool:
    """True for bias controllers (``selection`` + ``update``), False for loss balancers."""
    return hasattr(balancer, "update") and hasattr(balancer, "selection")


def scores_from_logits(logits: torch.Tensor, score_fn: str = "softmax") -> torch.Tensor:
    """``softmax(h)`` or ``sigmoid(h)`` over the last (expert) axis."""
    check_choice("score_fn", score_fn, SCORE_FNS)
    return logits.softmax(-1) if score_fn == "softmax" else logits.sigmoid()


def select_topk(scores: torch.Tensor, k: int, selection: torch.Tensor | None = None,
                norm_topk: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, gates)``: top-k of ``selection`` (default: the scores), gates from ``scores``.

    The functional core shared by the router and the router-only simulation; ``selection`` is
    e.g. ``scores + bias`` (loss-free balancing).
    """
    n_experts = scores.shape[-1]
    check_int("k", k, minimum=1)
    if k > n_experts:
        raise ValueError(f"k must be <= n_experts ({n_experts}), got k={k}")
    # S_t = TopK(s_t + b): the bias changes which experts are chosen ...
    biased = scores if selection is None else selection  # (B..., E)
    indices = biased.topk(k, dim=-1).indices  # (B..., k)
    # ... but g_{t,i} is read from the unbiased scores
    gates = scores.gather(-1, indices)  # (B..., k)
    if norm_topk if norm_topk is not None else k > 1:
        gates = gates / gates.sum(-1, keepdim=True).clamp_min(torch.finfo(gates.dtype).tiny)
    return indices, gates


def check_routing(router_logits: torch.Tensor, indices: torch.Tensor, n_experts: int | None) -> int:
    """Validate ``router_logits (..., E)`` and ``indices (..., k)``; returns E."""
    check_tensor("router_logits", router_logits, dtype_kind="float", finite=True)
    check_tensor("indices", indices)
    if router_logits.dim() < 2:
        raise ValueError(f"router_logits must have shape (..., E) with tokens in front, got {tuple(router_logits.shape)}")
    if indices.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.shape[:-1] != router_logits.shape[:-1] or indices.dim() != router_logits.dim():
        raise ValueError(f"indices must have shape {tuple(router_logits.shape[:-1])} + (k,), got {tuple(indices.shape)}")
    e = router_logits.shape[-1]
    if n_experts is not None and e != n_experts:
        raise ValueError(f"router_logits must have {n_experts} experts on the last axis, got {e}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= e):
        raise ValueError(f"indices must lie in [0, {e}), got range [{indices.min()}, {indices.max()}]")
    return e


class TopKRouter(nn.Module):
    """Token-choice top-k router ``h = W_r x`` with an optional balancer.

    Args:
        d_model: token width d.
        n_experts: number of routed experts E.
        k: experts per token (1 <= k <= E).
        balancer: ``None``, a loss balancer or a bias controller (see the module docstring).
        score_fn: ``"softmax"`` (Switch, Mixtral) or ``"sigmoid"`` (DeepSeek-V3).
        norm_topk: renormalize the k gates to sum to 1; ``None`` means ``k > 1``.
    """

    def __init__(self, d_model: int, n_experts: int, k: int, balancer: Any = None, *,
                 score_fn: str = "softmax", norm_topk: bool | None = None):
        super().__init__()
        check_int("d_model", d_model, minimum=1)
        check_int("n_experts", n_experts, minimum=1)
        check_int("k", k, minimum=1)
        if k > n_experts:
            raise ValueError(f"k must be <= n_experts ({n_experts}), got k={k}")
        check_choice("score_fn", score_fn, SCORE_FNS)
        if balancer is not None and not (is_controller(balancer) or hasattr(balancer, "loss")):
            raise TypeError("balancer must have loss(router_logits, indices) or selection(scores) + update(load), "
                            f"got {type(balancer).__name__}")
        if getattr(balancer, "n_experts", n_experts) != n_experts:
            raise ValueError(f"balancer was built for {balancer.n_experts} experts, router has {n_experts}")
        self.d_model, self.n_experts, self.k = d_model, n_experts, k
        self.score_fn, self.norm_topk = score_fn, norm_topk
        self.balancer = balancer
        self.gate = nn.Linear(d_model, n_experts, bias=False)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        check_tensor("x", x, dtype_kind="float")
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (..., d_model={self.d_model}), got {tuple(x.shape)}")
        logits = self.gate(x)  # (B..., E)
        return self.route(logits)

    def route(self, logits: torch.Tensor) -> RouterOutput:
        """Route from given logits (..., E): selection, gates, load and the balancer's loss."""
        check_tensor("router_logits", logits, dtype_kind="float")
        if logits.shape[-1] != self.n_experts:
            raise ValueError(f"router_logits must have shape (..., {self.n_experts}), got {tuple(logits.shape)}")
        if not torch.isfinite(logits).all():
            raise ValueError("router_logits contain NaN or Inf (diverged router or bad input x)")
        scores = scores_from_logits(logits, self.score_fn)  # (B..., E)
        controller = is_controller(self.balancer)
        selection = self.balancer.selection(scores) if controller else None  # (B..., E)
        indices, gates = select_topk(scores, self.k, selection, self.norm_topk)
        load = expert_load(indices, self.n_experts)  # (E,)
        aux_loss, stats = logits.new_zeros(()), {}
        if self.balancer is not None and not controller:
            aux_loss, stats = self.balancer.loss(logits, indices)
        return RouterOutput(indices, gates, logits, scores, load, aux_loss, stats)

    def extra_repr(self) -> str:
        name = type(self.balancer).__name__ if self.balancer is not None else None
        return (f"d_model={self.d_model}, n_experts={self.n_experts}, k={self.k}, "
                f"score_fn={self.score_fn!r}, balancer={name}")


__all__ = ["RouterOutput", "TopKRouter", "check_routing", "is_controller", "scores_from_logits",
           "select_topk", "SCORE_FNS"]
