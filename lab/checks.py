"""Argument checks shared by every algorithm: each error names the argument and what was expected.

    check_positive("lr", lr)                 # ValueError: lr must be > 0, got -1.0
    check_range("beta1", b1, 0.0, 1.0, hi_open=True)
    check_tensor("rewards", rewards, ndim=1, finite=True)
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch


def check_number(name: str, value: Any) -> float:
    """``value`` must be a real number (not a bool, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
        isinstance(value, torch.Tensor) and value.numel() == 1
    ):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value > 0`` (or ``>= 0`` with ``allow_zero``)."""
    value = check_number(name, value)
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def check_nonneg(name: str, value: Any) -> float:
    """``value >= 0``."""
    return check_positive(name, value, allow_zero=True)


def check_range(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                hi_open: bool = False) -> float:
    """``lo <= value <= hi`` with optionally open ends."""
    value = check_number(name, value)
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if below or above:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must lie in {left}{lo}, {hi}{right}, got {value}")
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` is an int (not a bool), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_betas(betas: Any, name: str = "betas") -> tuple[float, float]:
    """A pair of coefficients in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {betas!r}")
    b1 = check_range(f"{name}[0]", betas[0], 0.0, 1.0, hi_open=True)
    b2 = check_range(f"{name}[1]", betas[1], 0.0, 1.0, hi_open=True)
    return b1, b2


def check_tensor(name: str, value: Any, *, ndim: int | Sequence[int] | None = None,
                 shape: Sequence[int | None] | None = None, finite: bool = False,
                 dtype_kind: str | None = None) -> torch.Tensor:
    """``value`` is a tensor with the given number of dims / shape (None = any size there),
    optionally all finite, optionally floating (``dtype_kind="float"``) or boolean/integer."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dims, "
                             f"got shape {tuple(value.shape)}")
    if shape is not None:
        if value.dim() != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}")
    if dtype_kind == "float" and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if finite and value.is_floating_point() and not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return value


def check_same_shape(**tensors: torch.Tensor) -> None:
    """All given tensors share one shape; the error lists each name with its shape."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items() if v is not None}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"shape mismatch: {listing}")
