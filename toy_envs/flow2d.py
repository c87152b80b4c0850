"""2-D target distributions, rewards on points and sample metrics for the flow / diffusion lessons.

Targets (each returns points ``(n, 2)`` and the index of the component they came from):

- ``gaussians8``: a mixture of 8 Gaussians with std ``std = 0.3`` whose means lie on a circle of
  radius 4 (mode k at angle 2πk/8); the classic CFM toy.
- ``moons``: two interleaved half circles with Gaussian jitter, scaled by 2 and centred (2 modes).

Rewards ``r(x)`` on points ``(n, 2) -> (n,)``, all differentiable except ``sparse``:

- ``dense``: Gaussian bump ``exp(−‖x − μ*‖² / (2·w²))``, ``w = 0.5``, on one target mode μ*;
- ``sparse``: ``1[‖x − μ*‖ < 1]`` (a binary success signal);
- ``linear``: ``x_1`` (unbounded, hackable: shows over-optimisation off the data manifold).

Metrics: :func:`energy_distance` (a distance between two sample sets, 0 iff equal in law),
:func:`modes_covered` (diversity), :func:`off_manifold_fraction`.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from lab.checks import check_choice, check_int, check_positive

TARGETS = ("gaussians8", "moons")
REWARDS = ("dense", "sparse", "linear")


def mode_centers(target: str = "gaussians8", radius: float = 4.0, *,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Centres of the components of ``target``: ``(K, 2)`` (on ``device``)."""
    check_choice("target", target, TARGETS)
    if target == "gaussians8":
        angles = torch.arange(8, dtype=torch.float32, device=device) * (2 * math.pi / 8)
        return radius * torch.stack([angles.cos(), angles.sin()], dim=-1)
    return torch.tensor([[-1.0, 0.75], [1.0, -0.75]], device=device)


def sample_target(target: str, n: int, generator: torch.Generator, *, std: float = 0.3,
                  radius: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (n, 2), labels (n,))`` drawn from ``target`` with an explicit generator (on its device)."""
    check_choice("target", target, TARGETS)
    check_int("n", n, minimum=1)
    check_positive("std", std)
    dev = generator.device
    if target == "gaussians8":
        labels = torch.randint(0, 8, (n,), generator=generator, device=dev)
        centers = mode_centers(target, radius, device=dev)
        return centers[labels] + std * torch.randn(n, 2, generator=generator, device=dev), labels
    labels = torch.randint(0, 2, (n,), generator=generator, device=dev)
    angle = math.pi * torch.rand(n, generator=generator, device=dev)
    upper = torch.stack([angle.cos(), angle.sin()], dim=-1)                # (n, 2)
    lower = torch.stack([1 - angle.cos(), 0.5 - angle.sin()], dim=-1)
    x = torch.where(labels[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25], device=dev)
    return 2.0 * x + 0.1 * torch.randn(n, 2, generator=generator, device=dev), labels


def make_reward(name: str = "dense", center: torch.Tensor | tuple[float, float] = (4.0, 0.0), *,
                width: float = 0.5, radius: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reward ``r: (n, 2) -> (n,)`` named ``name`` (see the module docstring); a tensor
    ``center`` keeps its device (pass it on the device the points will live on)."""
    check_choice("name", name, REWARDS)
    check_positive("width", width)
    check_positive("radius", radius)
    mu = torch.as_tensor(center, dtype=torch.float32,
                         device=center.device if isinstance(center, torch.Tensor) else "cpu")

    def dense(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((x - mu) ** 2).sum(-1) / (2 * width ** 2))

    def sparse(x: torch.Tensor) -> torch.Tensor:
        return (((x - mu) ** 2).sum(-1) < radius ** 2).to(x.dtype)

    def linear(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]

    return {"dense": dense, "sparse": sparse, "linear": linear}[name]


def energy_distance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """``2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖`` (V-statistic, NumPy); 0 when the samples match."""
    x, y = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for v in (x, y))
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)

    def mean_dist(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).mean())

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def mode_fractions(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Fraction of points whose nearest centre is each mode: ``(K,)``."""
    nearest = torch.cdist(x.float(), centers.float()).argmin(-1)
    return torch.bincount(nearest, minlength=centers.shape[0]).float() / x.shape[0]


def modes_covered(x: torch.Tensor, centers: torch.Tensor, min_fraction: float = 0.01) -> int:
    """Number of modes holding at least ``min_fraction`` of the points (diversity)."""
    return int((mode_fractions(x, centers) >= min_fraction).sum())


def off_manifold_fraction(x: torch.Tensor, centers: torch.Tensor, std: float = 0.3) -> float:
    """Fraction of points farther than ``3·std`` from every mode."""
    return float((torch.cdist(x.float(), centers.float()).min(-1).values > 3 * std).float().mean())


__all__ = ["TARGETS", "REWARDS", "mode_centers", "sample_target", "make_reward", "energy_distance",
           "mode_fractions", "modes_covered", "off_manifold_fraction"]
