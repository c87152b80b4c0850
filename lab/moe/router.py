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

Group-limited routing (DeepSeek-V3, ``n_group`` G > 1, ``topk_group`` M): the E experts are split
into G contiguous groups of E/G; each token first keeps the M groups with the largest sum of their
two best *selection* scores (bias included), then picks its k experts inside those groups only::

    score(group g) = sum of the top-2 of {s_{t,i} + b_i : i in g}     (top-1 if a group has one expert)
    S_t = TopK_i (s_{t,i} + b_i)  over the experts of the M best groups (the rest masked with -inf)

and the gates are finally multiplied by ``routed_scaling_factor`` (DeepSeek-V3: 2.5), so
``g_{t,i} = rho * s_{t,i} / sum_{j in S_t} s_{t,j}``. This follows Hugging Face's
``DeepseekV3TopkRouter`` (transformers 5.x) exactly, including the top-2 group score where
DeepSeek's own inference code uses the group max when it has no bias; the router has a parity test.

Choices where papers differ: the default ``norm_topk`` renormalizes the gates over the chosen
experts when k > 1 (Mixtral, DeepSeek-V3) and keeps the raw probability when k = 1 (Switch: a
renormalized single gate would be 1 and pass no gradient to the router).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lab.checks import check_choice, check_int, check_positive, check_tensor
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


def check_groups(n_experts: int, k: int, n_group: int = 1, topk_group: int | None = None,
                 routed_scaling_factor: float = 1.0) -> int:
    """Validate the routing shape (k, groups, scaling); returns ``topk_group`` (default: all groups)."""
    check_int("k", k, minimum=1)
    if k > n_experts:
        raise ValueError(f"k must be <= n_experts ({n_experts}), got k={k}")
    check_int("n_group", n_group, minimum=1)
    if n_experts % n_group:
        raise ValueError(f"n_group must divide n_experts ({n_experts}), got n_group={n_group}")
    topk_group = n_group if topk_group is None else topk_group
    check_int("topk_group", topk_group, minimum=1)
    if topk_group > n_group:
        raise ValueError(f"topk_group must be <= n_group ({n_group}), got topk_group={topk_group}")
    if k > topk_group * (n_experts // n_group):
        raise ValueError(f"k={k} experts do not fit in topk_group={topk_group} groups of "
                         f"{n_experts // n_group} experts")
    check_positive("routed_scaling_factor", routed_scaling_factor)
    return topk_group


def group_mask(selection: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """(B..., E) bool: True on the experts of the ``topk_group`` groups with the best top-2 score sum."""
    e = selection.shape[-1]
    grouped = selection.unflatten(-1, (n_group, e // n_group))  # (B..., G, E/G)
    # score(g) = sum of the two best selection scores in g
    group_scores = grouped.topk(min(2, e // n_group), dim=-1).values.sum(-1)  # (B..., G)
    best = group_scores.topk(topk_group, dim=-1).indices  # (B..., M)
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(-1, best, True)  # (B..., G)
    return keep.unsqueeze(-1).expand_as(grouped).flatten(-2)  # (B..., E)


def select_topk(scores: torch.Tensor, k: int, selection: torch.Tensor | None = None,
                norm_topk: bool | None = None, *, n_group: int = 1, topk_group: int | None = None,
                routed_scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, gates)``: top-k of ``selection`` (default: the scores), gates from ``scores``.

    The functional core shared by the router and the router-only simulation; ``selection`` is
    e.g. ``scores + bias`` (loss-free balancing). ``n_group``/``topk_group`` restrict the choice to
    the best groups of experts and ``routed_scaling_factor`` multiplies the gates (DeepSeek-V3).
    """
    check_tensor("scores", scores, dtype_kind="float", finite=True)
    if scores.dim() < 1:
        raise ValueError("scores must have shape (..., E)")
    if norm_topk is not None and not isinstance(norm_topk, bool):
        raise TypeError(f"norm_topk must be True, False or None, got {norm_topk!r}")
    n_experts = scores.shape[-1]
    topk_group = check_groups(n_experts, k, n_group, topk_group, routed_scaling_factor)
    # S_t = TopK(s_t + b): the bias changes which experts are chosen ...
    biased = scores if selection is None else selection  # (B..., E)
    if biased.shape != scores.shape:
        raise ValueError(f"selection must have the shape of scores {tuple(scores.shape)}, got {tuple(biased.shape)}")
    if selection is not None and torch.isnan(selection).any():
        raise ValueError("selection contains NaN (a balancer's bias diverged?)")
    if topk_group < n_group:  # group-limited routing: experts outside the best groups cannot win
        biased = biased.masked_fill(~group_mask(biased, n_group, topk_group), float("-inf"))
    indices = biased.topk(k, dim=-1).indices  # (B..., k)
    # ... but g_{t,i} is read from the unbiased scores
    gates = scores.gather(-1, indices)  # (B..., k)
    if norm_topk if norm_topk is not None else k > 1:
        gates = gates / gates.sum(-1, keepdim=True).clamp_min(torch.finfo(gates.dtype).tiny)
    if routed_scaling_factor != 1.0:
        gates = gates * routed_scaling_factor  # g = rho * s / sum s
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
    if indices.shape[-1] > e:
        raise ValueError(f"indices must choose k <= E = {e} experts per token, got k = {indices.shape[-1]}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= e):
        raise ValueError(f"indices must lie in [0, {e}), got range [{indices.min()}, {indices.max()}]")
    if indices.shape[-1] > 1 and indices.numel() and (indices.sort(-1).values.diff(dim=-1) == 0).any():
        raise ValueError("indices must name k distinct experts per token, got a repeated expert")
    return e


def token_mask(attention_mask: torch.Tensor | None, token_shape: torch.Size, like: torch.Tensor
               ) -> torch.Tensor | None:
    """``attention_mask`` (1 = real token, 0 = padding) as a float tensor of ``token_shape``.

    The mask's shape must equal ``token_shape`` or a suffix of it (a ``(B, S)`` mask applies to every
    layer of ``(L, B, S)`` stacked router outputs, as Hugging Face broadcasts it over layers).
    """
    if attention_mask is None:
        return None
    check_tensor("attention_mask", attention_mask)
    shape = tuple(attention_mask.shape)
    if attention_mask.dim() > len(token_shape) or tuple(token_shape[len(token_shape) - len(shape):]) != shape:
        raise ValueError(f"attention_mask must have shape {tuple(token_shape)} or a suffix of it, got {shape}")
    m = attention_mask.to(device=like.device, dtype=like.dtype)
    if not ((m == 0) | (m == 1)).all():
        raise ValueError("attention_mask must hold 0 (padding) and 1 (real token) only")
    return m.expand(token_shape)


class TopKRouter(nn.Module):
    """Token-choice top-k router ``h = W_r x`` with an optional balancer.

    Args:
        d_model: token width d.
        n_experts: number of routed experts E.
        k: experts per token (1 <= k <= E).
        balancer: ``None``, a loss balancer or a bias controller (see the module docstring).
        score_fn: ``"softmax"`` (Switch, Mixtral) or ``"sigmoid"`` (DeepSeek-V3).
        norm_topk: renormalize the k gates to sum to 1; ``None`` means ``k > 1``.
        n_group: G, contiguous groups of experts (DeepSeek-V3: 8); 1 = no group limit.
        topk_group: M, groups a token may use (DeepSeek-V3: 4); ``None`` = all G.
        routed_scaling_factor: rho, multiplies the gates (DeepSeek-V3: 2.5).
        device, dtype: of the router weights (torch's factory arguments).
    """

    def __init__(self, d_model: int, n_experts: int, k: int, balancer: Any = None, *,
                 score_fn: str = "softmax", norm_topk: bool | None = None, n_group: int = 1,
                 topk_group: int | None = None, routed_scaling_factor: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        check_int("d_model", d_model, minimum=1)
        check_int("n_experts", n_experts, minimum=1)
        topk_group = check_groups(n_experts, k, n_group, topk_group, routed_scaling_factor)
        check_choice("score_fn", score_fn, SCORE_FNS)
        if norm_topk is not None and not isinstance(norm_topk, bool):
            raise TypeError(f"norm_topk must be True, False or None, got {norm_topk!r}")
        if balancer is not None and not (is_controller(balancer) or hasattr(balancer, "loss")):
            raise TypeError("balancer must have loss(router_logits, indices) or selection(scores) + update(load), "
                            f"got {type(balancer).__name__}")
        if getattr(balancer, "n_experts", n_experts) != n_experts:
            raise ValueError(f"balancer was built for {balancer.n_experts} experts, router has {n_experts}")
        self.d_model, self.n_experts, self.k = d_model, n_experts, k
        self.score_fn, self.norm_topk = score_fn, norm_topk
        self.n_group, self.topk_group = n_group, topk_group
        self.routed_scaling_factor = float(routed_scaling_factor)
        self.balancer = balancer
        self.gate = nn.Linear(d_model, n_experts, bias=False, device=device, dtype=dtype)

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
        indices, gates = select_topk(scores, self.k, selection, self.norm_topk, n_group=self.n_group,
                                     topk_group=self.topk_group, routed_scaling_factor=self.routed_scaling_factor)
        load = expert_load(indices, self.n_experts)  # (E,)
        aux_loss, stats = logits.new_zeros(()), {}
        if self.balancer is not None and not controller:
            aux_loss, stats = self.balancer.loss(logits, indices)
        return RouterOutput(indices, gates, logits, scores, load, aux_loss, stats)

    def extra_repr(self) -> str:
        name = type(self.balancer).__name__ if self.balancer is not None else None
        groups = (f", n_group={self.n_group}, topk_group={self.topk_group}" if self.n_group > 1 else "")
        scale = f", routed_scaling_factor={self.routed_scaling_factor}" if self.routed_scaling_factor != 1 else ""
        return (f"d_model={self.d_model}, n_experts={self.n_experts}, k={self.k}, "
                f"score_fn={self.score_fn!r}{groups}{scale}, balancer={name}")


__all__ = ["RouterOutput", "TopKRouter", "check_groups", "check_routing", "group_mask", "is_controller",
           "scores_from_logits", "select_topk", "token_mask", "SCORE_FNS"]
