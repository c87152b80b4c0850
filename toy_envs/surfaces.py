"""Two-dimensional test surfaces for optimizers.

Each surface is a :class:`Surface`: a torch function ``f(xy)`` of a ``(..., 2)`` tensor returning
``(...)`` values, with its global minimizers, minimum value, a plotting range, and a default
start point. Evaluate on a grid for contours, or on a single point inside a training loop.

- ``rosenbrock``: ``(a - x)^2 + b (y - x^2)^2`` with a=1, b=100; a curved, narrow valley;
  minimum 0 at (1, 1).
- ``beale``: ``(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2``; minimum 0 at (3, 0.5).
- ``himmelblau``: ``(x^2 + y - 11)^2 + (x + y^2 - 7)^2``; four minima of value 0.
- ``saddle``: ``x^2 - y^2 + y^4 / 4``; a saddle at the origin, minima -1 at (0, +-sqrt 2).
- ``quadratic``: ``(kappa x^2 + y^2) / 2`` with condition number kappa = 50; minimum 0 at 0.
- ``rastrigin``: ``20 + sum(x_i^2 - 10 cos(2 pi x_i))``; many local minima, global 0 at 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class Surface:
    """A 2-D test function with its minimizers and a plotting range."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    minimizers: tuple[tuple[float, float], ...]
    minimum: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    start: tuple[float, float]
    log_scale: bool = False  # contours look best on log(f - f_min + 1)

    def __call__(self, xy: torch.Tensor) -> torch.Tensor:
        if not isinstance(xy, torch.Tensor):
            raise TypeError(f"xy must be a torch.Tensor of shape (..., 2), got {type(xy).__name__}")
        if xy.shape[-1:] != (2,):
            raise ValueError(f"xy must have shape (..., 2), got {tuple(xy.shape)}")
        return self.fn(xy)

    def grid(self, n: int = 100, x_range: tuple[float, float] | None = None,
             y_range: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(xs (n,), ys (n,), z (n, n))`` over the plotting range (or the ranges given);
        ``z[i, j] = f(xs[j], ys[i])``."""
        x_range, y_range = x_range or self.x_range, y_range or self.y_range
        for name, (lo, hi) in (("x_range", x_range), ("y_range", y_range)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"{name} must be finite with lo < hi, got {(lo, hi)}")
        xs = torch.linspace(*x_range, n, dtype=torch.float64)
        ys = torch.linspace(*y_range, n, dtype=torch.float64)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return xs, ys, self(torch.stack([xx, yy], dim=-1))

    def view(self, points=(), *, pad: float = 0.08, reach: float = 3.0
             ) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(x_range, y_range)`` that holds the plotting range and every point of ``points``
        (an ``(N, 2)`` array-like: start points, trajectories) with a margin of ``pad`` of the
        extent. Points farther than ``reach`` extents from the range's centre (a run blowing up)
        and non-finite ones are left out, so one divergent run does not shrink the surface to a dot.
        """
        lo = np.array([self.x_range[0], self.y_range[0]], dtype=float)
        hi = np.array([self.x_range[1], self.y_range[1]], dtype=float)
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        centre, extent = (lo + hi) / 2, hi - lo
        keep = np.isfinite(pts).all(1) & (np.abs(pts - centre) <= reach * extent).all(1)
        if keep.any():
            lo, hi = np.minimum(lo, pts[keep].min(0)), np.maximum(hi, pts[keep].max(0))
        margin = pad * (hi - lo)
        lo, hi = lo - margin, hi + margin
        return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))

    def distance_to_min(self, xy: torch.Tensor) -> torch.Tensor:
        """Euclidean distance from ``xy (..., 2)`` to the nearest global minimizer."""
        mins = torch.tensor(self.minimizers, dtype=xy.dtype, device=xy.device)  # (M, 2)
        return (xy.unsqueeze(-2) - mins).norm(dim=-1).min(dim=-1).values


def _rosenbrock(xy, a=1.0, b=100.0):
    x, y = xy[..., 0], xy[..., 1]
    return (a - x) ** 2 + b * (y - x**2) ** 2


def _beale(xy):
    x, y = xy[..., 0], xy[..., 1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _himmelblau(xy):
    x, y = xy[..., 0], xy[..., 1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _saddle(xy):
    x, y = xy[..., 0], xy[..., 1]
    return x**2 - y**2 + y**4 / 4


def _quadratic(xy, kappa=50.0):
    x, y = xy[..., 0], xy[..., 1]
    return 0.5 * (kappa * x**2 + y**2)


def _rastrigin(xy):
    return 20.0 + (xy**2 - 10.0 * torch.cos(2 * math.pi * xy)).sum(-1)


SURFACES: dict[str, Surface] = {
    s.name: s
    for s in [
        Surface("rosenbrock", _rosenbrock, ((1.0, 1.0),), 0.0, (-2.0, 2.0), (-1.0, 3.0),
                (-1.5, 2.0), log_scale=True),
        Surface("beale", _beale, ((3.0, 0.5),), 0.0, (-4.5, 4.5), (-4.5, 4.5), (1.0, 1.5),
                log_scale=True),
        Surface("himmelblau", _himmelblau,
                ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)),
                0.0, (-5.0, 5.0), (-5.0, 5.0), (0.0, 0.0), log_scale=True),
        Surface("saddle", _saddle, ((0.0, math.sqrt(2.0)), (0.0, -math.sqrt(2.0))), -1.0,
                (-2.0, 2.0), (-2.5, 2.5), (1.5, 1e-3)),
        Surface("quadratic", _quadratic, ((0.0, 0.0),), 0.0, (-2.0, 2.0), (-2.0, 2.0),
                (1.5, 1.8)),
        Surface("rastrigin", _rastrigin, ((0.0, 0.0),), 0.0, (-5.12, 5.12), (-5.12, 5.12),
                (3.2, 2.3)),
    ]
}


def get_surface(name: str) -> Surface:
    """The surface called ``name``; ``KeyError`` lists the valid names."""
    try:
        return SURFACES[name]
    except KeyError:
        raise KeyError(f"unknown surface {name!r}; valid names: {', '.join(SURFACES)}") from None
