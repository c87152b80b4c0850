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
so no Python loop runs over tokens.

Dispatch. The N kept (token, slot) assignments are sorted by expert, so expert i owns the
contiguous rows ``offs[i-1]:offs[i]`` of the gathered tokens ``X_sorted (N, d)``; then, with no
Python loop over experts (``impl``):

- ``"grouped_mm"``: ``torch.nn.functional.grouped_mm(X_sorted, W1, offs=offs)`` runs the E
  matmuls of different heights as one grouped GEMM (forward and backward), and again for W2;
- ``"bmm"``: the rows are scattered into a zero-padded ``(E, C_max, d)`` buffer (C_max = the largest
  expert's count) and multiplied with one ``torch.bmm`` (the padding costs E * C_max - N wasted rows);
- ``"loop"``: the reference - one small MLP per expert on its slice, in a Python loop over E. The
  fast paths are tested against it (outputs and gradients equal to 1e-6).

``impl="auto"`` (the default) uses ``grouped_mm`` where this torch has a usable kernel for the
device, dtype and shapes (a one-time probe per device and dtype; on CPU: float32/bfloat16/float16
with rows a multiple of 16 bytes - so not float64) and the padded ``bmm`` otherwise.
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
IMPLS = ("auto", "grouped_mm", "bmm", "loop")
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_GROUPED_MM_PROBED: dict[tuple[str, int | None, torch.dtype], bool] = {}


def expert_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """``C = ceil(CF * k * T / E)``."""
    check_int("n_tokens", n_tokens, minimum=0)
    check_int("n_experts", n_experts, minimum=1)
    check_int("k", k, minimum=1)
    check_positive("capacity_factor", capacity_factor)
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
    check_int("n_experts", n_experts, minimum=1)
    check_int("capacity", capacity, minimum=0)
    check_choice("priority", priority, PRIORITIES)
    if indices.is_floating_point() or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= n_experts):
        raise ValueError(f"indices must lie in [0, {n_experts}), got range [{indices.min()}, {indices.max()}]")
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


def _probe_grouped_mm(device: torch.device, dtype: torch.dtype) -> bool:
    """Does ``grouped_mm`` run forward and backward on this device and dtype? (checked once)"""
    try:
        a = torch.ones(8, 16, device=device, dtype=dtype, requires_grad=True)
        b = torch.ones(2, 16, 8, device=device, dtype=dtype, requires_grad=True)
        offs = torch.tensor([3, 8], device=device, dtype=torch.int32)
        out = torch.nn.functional.grouped_mm(a, b, offs=offs)
        out.backward(torch.ones_like(out))
        return bool(torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all())
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def grouped_mm_usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """True when ``grouped_mm(x (N, d), w (E, d, h), offs=...)`` has a kernel for these tensors."""
    if not hasattr(torch.nn.functional, "grouped_mm") or x.device.type == "meta":
        return False
    if x.dtype not in _GROUPED_MM_DTYPES or w.dtype != x.dtype or x.shape[0] == 0:
        return False
    for t in (x, w):  # the kernels need unit-stride rows of a multiple of 16 bytes, 16-byte aligned
        if t.stride(-1) != 1 or (t.stride(-2) * t.element_size()) % 16 or t.data_ptr() % 16:
            return False
    key = (x.device.type, x.device.index, x.dtype)
    if key not in _GROUPED_MM_PROBED:
        _GROUPED_MM_PROBED[key] = _probe_grouped_mm(x.device, x.dtype)
    return _GROUPED_MM_PROBED[key]


def _contiguous_grad(t: torch.Tensor) -> torch.Tensor:
    """grouped_mm's backward rejects stride-0 (expanded) gradients: hand it a dense one."""
    if t.requires_grad:
        t.register_hook(lambda g: g.contiguous())
    return t


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
        impl: expert dispatch, ``"auto"``, ``"grouped_mm"``, ``"bmm"`` or ``"loop"`` (the
            reference); see the module docstring.
        score_fn, norm_topk, n_group, topk_group, routed_scaling_factor: passed to the router.
        device, dtype: of every parameter (torch's factory arguments).
    """

    def __init__(self, d_model: int, n_experts: int, k: int = 2, d_hidden: int | None = None,
                 balancer: Any = None, *, capacity_factor: float | None = None, priority: str = "sequence",
                 impl: str = "auto", score_fn: str = "softmax", norm_topk: bool | None = None,
                 n_group: int = 1, topk_group: int | None = None, routed_scaling_factor: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        d_hidden = 2 * d_model if d_hidden is None else d_hidden
        check_int("d_hidden", d_hidden, minimum=1)
        if capacity_factor is not None:
            check_positive("capacity_factor", capacity_factor)
        self.capacity_factor = capacity_factor
        self.priority = check_choice("priority", priority, PRIORITIES)
        self.impl = check_choice("impl", impl, IMPLS)
        self.router = TopKRouter(d_model, n_experts, k, balancer, score_fn=score_fn, norm_topk=norm_topk,
                                 n_group=n_group, topk_group=topk_group,
                                 routed_scaling_factor=routed_scaling_factor, device=device, dtype=dtype)
        self.n_experts, self.k, self.d_model, self.d_hidden = n_experts, k, d_model, d_hidden
        scale1, scale2 = d_model ** -0.5, d_hidden ** -0.5
        kw = {"device": device, "dtype": dtype}
        self.w1 = nn.Parameter(torch.randn(n_experts, d_model, d_hidden, **kw) * scale1)
        self.b1 = nn.Parameter(torch.zeros(n_experts, d_hidden, **kw))
        self.w2 = nn.Parameter(torch.randn(n_experts, d_hidden, d_model, **kw) * scale2)
        self.b2 = nn.Parameter(torch.zeros(n_experts, d_model, **kw))

    def expert(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``FFN_i(x)`` for x of shape (N, d)."""
        return torch.nn.functional.gelu(x @ self.w1[i] + self.b1[i]) @ self.w2[i] + self.b2[i]

    # -- the three dispatch implementations: rows xs (N, d) sorted by expert -> FFN outputs (N, d)
    def experts_loop(self, xs: torch.Tensor, expert: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Reference: one small MLP per expert on its contiguous slice (a Python loop over E)."""
        chunks = xs.split(counts.tolist())  # E contiguous slices
        # unbind (not w1[i]): its backward stacks the E gradients once instead of adding E full-size ones
        w1, b1, w2, b2 = self.w1.unbind(0), self.b1.unbind(0), self.w2.unbind(0), self.b2.unbind(0)
        act = torch.nn.functional.gelu
        return torch.cat([act(c @ w1[i] + b1[i]) @ w2[i] + b2[i] for i, c in enumerate(chunks)])  # (N, d)

    def experts_grouped_mm(self, xs: torch.Tensor, expert: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Two grouped GEMMs: expert i multiplies rows ``offs[i-1]:offs[i]`` by its own W1, W2."""
        gmm = torch.nn.functional.grouped_mm
        offs = counts.cumsum(0).to(torch.int32)  # (E,) end of each expert's rows
        # h = act(X W1_e + b1_e) for every row, e = the row's expert
        h = _contiguous_grad(gmm(xs, self.w1, offs=offs)) + self.b1.index_select(0, expert)  # (N, h)
        h = torch.nn.functional.gelu(h)
        return _contiguous_grad(gmm(h, self.w2, offs=offs)) + self.b2.index_select(0, expert)  # (N, d)

    def experts_bmm(self, xs: torch.Tensor, expert: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Pad every expert's rows to the largest count C and run one batched matmul (E, C, d)."""
        n, e = xs.shape[0], self.n_experts
        starts = counts.cumsum(0) - counts  # (E,) first row of each expert
        slot = torch.arange(n, device=xs.device) - starts[expert]  # (N,) row within its expert
        c_max = int(counts.max()) if n else 0
        buf = xs.new_zeros(e, c_max, self.d_model).index_put((expert, slot), xs)  # (E, C, d)
        h = torch.nn.functional.gelu(torch.baddbmm(self.b1.unsqueeze(1), buf, self.w1))  # (E, C, h)
        out = torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)  # (E, C, d)
        return out[expert, slot]  # (N, d), the padding rows dropped

    def resolved_impl(self, xs: torch.Tensor) -> str:
        """The implementation ``impl="auto"`` picks for rows ``xs``."""
        if self.impl != "auto":
            return self.impl
        usable = grouped_mm_usable(xs, self.w1) and grouped_mm_usable(xs.new_empty(1, self.d_hidden), self.w2)
        return "grouped_mm" if usable else "bmm"

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
        flat_keep = keep.reshape(-1)
        token = torch.arange(t, device=x.device).repeat_interleave(self.k)  # (T*k,)
        expert, gate = indices.reshape(-1), gates.reshape(-1)  # (T*k,)
        if self.capacity_factor is not None:
            token, expert, gate = token[flat_keep], expert[flat_keep], gate[flat_keep]  # (N,)
        order = torch.argsort(expert, stable=True)
        token, expert, gate = token[order], expert[order], gate[order]
        counts = torch.bincount(expert, minlength=self.n_experts)  # (E,) rows per expert
        xs = xf.index_select(0, token)  # (N, d) sorted by expert
        y = torch.zeros_like(xf)
        if xs.shape[0]:
            impl = self.resolved_impl(xs)
            out = getattr(self, f"experts_{impl}")(xs, expert, counts)  # (N, d)
            # y_t = sum_{kept i} g_{t,i} FFN_i(x_t)
            y = y.index_add(0, token, out * gate.unsqueeze(-1))  # (T, d)
        route = dataclasses.replace(route, dropped=~keep.reshape(*lead, self.k))
        return y.reshape(*lead, self.d_model), route


__all__ = ["IMPLS", "MoELayer", "PRIORITIES", "capacity_keep", "expert_capacity", "grouped_mm_usable"]
