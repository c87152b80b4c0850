"""Optimizer-state memory, measured from ``optimizer.state`` (what a checkpoint would hold).

    state_bytes(opt)          # bytes of every tensor in opt.state (nested dicts/lists included)
    state_bytes_by_key(opt)   # {"exp_avg": ..., "projector": ..., "step": ...}
    param_count(opt)          # numbers in the optimized parameters
    bytes_per_param(opt)      # state_bytes / param_count (AdamW in float32: ~8)

Only tensors count (``numel * element_size``); Python numbers (step counters kept as ints) and the
optimizer's own generator state are not optimizer *state* in this sense. The memory formulas of
the low-rank methods (for one m x n float32 weight, m >= n, rank r) that the tests check:

    AdamW          2 m n                      (+ one float32 step scalar per tensor)
    GaLore         2 m r + n r                (moments of R = G P^T, and P)
    Fira           GaLore + 1                 (the limiter's previous norm)
    FRUGAL         svd: 2 m r + n r; coordinates: 2 m r floats + r int64; blockwise: 2 m n if active else 0
    BAdam          2 x (size of the active block)
    GradNormLoRP   2 m r + n r + 2 m          (GaLore on the direction + Adam on one magnitude per row)
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Total bytes of the tensors held in ``optimizer.state``."""
    return sum(_tensor_bytes(state) for state in optimizer.state.values())


def state_bytes_by_key(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes per state key, summed over parameters (e.g. ``exp_avg``, ``projector``)."""
    out: dict[str, int] = defaultdict(int)
    for state in optimizer.state.values():
        for key, value in state.items():
            out[key] += _tensor_bytes(value)
    return dict(out)


def param_count(optimizer: torch.optim.Optimizer) -> int:
    """Numbers in the parameters the optimizer updates (each tensor counted once)."""
    seen: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def bytes_per_param(optimizer: torch.optim.Optimizer) -> float:
    """``state_bytes / param_count``: 8.0 for float32 AdamW, about ``8 r / n`` for GaLore."""
    count = param_count(optimizer)
    return state_bytes(optimizer) / count if count else 0.0


__all__ = ["state_bytes", "state_bytes_by_key", "param_count", "bytes_per_param"]
