"""A sparse Mixture-of-Experts feed-forward layer: top-k router, small MLP experts, capacity.

For tokens x_t (T of them, width d), E experts ``FFN_i(x) = W2_i act(W1_i x + b1_i) + b2_i`` and the
router's choices S_t with gates g_{t,i}::

    y_t = sum_{i in S_t, kept} g_{t,i} FFN_i(x_t)

Capacity ("Switch Transformers", arXiv 2101.03961; GShard, arXiv 2006.16668): with a capacity
factor CF every expert takes at most ``C = ceil(CF * k * T / E)`` assignments per batch. Assignments
are served in priority order - all first choices before any second choice (slot-major), and within
a slot in sequence order (``priority="sequence"``) or by descending top-1 score
(``priority="score"``, batch-prioritized routing, V-MoE arXiv 2106.05974) - and those beyond C are
dropped: they contribute 0, and the transformer's residual connection carries the token. The
position of an assignment in its expert's queue is a cumulative sum over a one-hot matrix (GShard),
so no Python loop runs over tokens; the experts run on contiguous slices of the tokens sorted by
expert (one small matmul per expert, the loop is over E).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from lab.checks import check_choice, check_int, check_positive, check_tensor
from lab.moe.router import RouterOutput, TopKRouter

PRIORITIES = ("sequence", "score")


def expert_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """``C = ceil(CF * k * T / E)``."""
    return int(math.ceil(capacity_factor * k * n_tokens / n_experts))


def capacity_keep(indices: torch.Tensor, n_experts: int, capacity: int, priority: str = "sequence",
                  top1_scores: torch.Tensor | None = None) -> torch.Tensor:
    """(T, k) bool: True for assignments within their expert's first ``capacity`` slots.

    Args:
        indices: (T, k) chosen experts, slot 0 = first choice.
        n_experts: E.
        capacity: C, slots per expert (>= 0).
        priority: ``"sequence"`` (token order) or ``"score"`` (descending ``top1_scores``).
        top1_scores: (T,) required for ``priority="score"``.
    """
    check_tensor("indices", indices, ndim=2)
    check_int("capacity", capacity, minimum=0)
    check_choice("priority", priority, PRIORITIES)
    t, k = indices.shape
    if priority == "score":
        if top1_scores is None or top1_scores.shape != (t,):
            raise ValueError(f"priority='score' needs top1_scores of shape ({t},)")
        token_order = torch.argsort(top1_scores, descending=True, stable=True)  # (T,)
    else:
        token_order = torch.arange(t, device=indices.device)
    # priority order: slot-major, then token order  -> (k*T,) expert ids
    ordered = indices[token_order].transpose(0, 1).reshape(-1)  # (k*T,)
    one_hot = torch.nn.functional.one_hot(ordered, n_experts)  # (k*T, E)
    # position of each assignment in its expert's queue (0-based)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1  # (k*T,)
    keep_ordered = (position < capacity).reshape(k, t).transpose(0, 1)  # (T, k) in token_order
    keep = torch.empty_like(keep_ordered)
    keep[token_order] = keep_ordered
    return keep


class MoELayer(nn.Module):
    """Sparse MoE feed-forward block: ``y, route = layer(x)`` for x of shape (..., d_model).

    Args:
        d_model: token width d.
        n_experts: E.
        k: experts per token.
        d_hidden: hidden width of each expert MLP (default 2 * d_model).
        balancer: passed to :class:`~lab.moe.router.TopKRouter`.
        capacity_factor: CF; ``None`` = no capacity limit (no token is dropped).
        priority: ``"sequence"`` or ``"score"`` (who keeps its slot when an expert overflows).
        score_fn, norm_topk: passed to the router.
    """

    def __init__(self, d_model: int, n_experts: int, k: int = 2, d_hidden: int | None = None,
                 balancer: Any = None, *, capacity_factor: float | None = None, priority: str = "sequence",
                 score_fn: str = "softmax", norm_topk: bool | None = None):
        super().__init__()
        d_hidden = 2 * d_model if d_hidden is None else d_hidden
        check_int("d_hidden", d_hidden, minimum=1)
        if capacity_factor is not None:
            check_positive("capacity_factor", capacity_factor)
        self.capacity_factor = capacity_factor
        self.priority = check_choice("priority", priority, PRIORITIES)
        self.router = TopKRouter(d_model, n_experts, k, balancer, score_fn=score_fn, norm_topk=norm_topk)
        self.n_experts, self.k, self.d_model = n_experts, k, d_model
        scale1, scale2 = d_model ** -0.5, d_hidden ** -0.5
        self.w1 = nn.Parameter(torch.randn(n_experts, d_model, d_hidden) * scale1)
        self.b1 = nn.Parameter(torch.zeros(n_experts, d_hidden))
        self.w2 = nn.Parameter(torch.randn(n_experts, d_hidden, d_model) * scale2)
        self.b2 = nn.Parameter(torch.zeros(n_experts, d_model))

    def expert(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``FFN_i(x)`` for x of shape (N, d)."""
        return torch.nn.functional.gelu(x @ self.w1[i] + self.b1[i]) @ self.w2[i] + self.b2[i]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        route = self.router(x)  # indices, gates: (..., k)
        lead = x.shape[:-1]
        xf = x.reshape(-1, self.d_model)  # (T, d)
        t = xf.shape[0]
        indices = route.indices.reshape(t, self.k)  # (T, k)
        gates = route.gates.reshape(t, self.k)  # (T, k)
        if self.capacity_factor is None:
            keep = torch.ones_like(indices, dtype=torch.bool)
        else:
            cap = expert_capacity(t, self.n_experts, self.k, self.capacity_factor)
            top1 = gates[:, 0] if self.priority == "score" else None
            keep = capacity_keep(indices, self.n_experts, cap, self.priority, top1)  # (T, k)
        # flatten the kept (token, slot) assignments and sort them by expert
        token = torch.arange(t, device=x.device).repeat_interleave(self.k)[keep.reshape(-1)]  # (N,)
        expert = indices.reshape(-1)[keep.reshape(-1)]  # (N,)
        gate = gates.reshape(-1)[keep.reshape(-1)]  # (N,)
        order = torch.argsort(expert, stable=True)
        token, expert, gate = token[order], expert[order], gate[order]
        counts = torch.bincount(expert, minlength=self.n_experts).tolist()
        chunks = xf[token].split(counts)  # E contiguous slices
        out = torch.cat([self.expert(i, chunk) for i, chunk in enumerate(chunks)])  # (N, d)
        # y_t = sum_{kept i} g_{t,i} FFN_i(x_t)
        y = torch.zeros_like(xf).index_add(0, token, out * gate.unsqueeze(-1))  # (T, d)
        route = dataclasses.replace(route, dropped=~keep.reshape(*lead, self.k))
        return y.reshape(*lead, self.d_model), route


__all__ = ["MoELayer", "PRIORITIES", "capacity_keep", "expert_capacity"]
