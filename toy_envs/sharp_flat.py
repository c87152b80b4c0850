"""A 2-D loss with a sharp, deeper minimum and a flat, shallower one (the sharpness lesson's toy).

    f(w) = - h_s exp(-|w - mu_s|^2 / (2 s_s^2)) - h_f exp(-|w - mu_f|^2 / (2 s_f^2)) + c/2 |w|^2

with mu_s = (-1, 0), s_s = 0.2, h_s = 1 (curvature about 25) and mu_f = (1.2, 0), s_f = 1,
h_f = 0.8 (curvature about 0.9), c = 0.1. Runs start in ``BOX`` = [-2.5, 2.5] x [-1.5, 1.5].
``FLAT_THRESHOLD``, the geometric mean of the two minima's curvatures, separates "in the sharp
minimum" from "somewhere flatter" by the top Hessian eigenvalue. Used by the experiment
``sharp_flat`` (:mod:`lab.experiments.sharpness`) and its figure (:mod:`lab.viz.sharpness`).
"""
from __future__ import annotations

import math

import torch

# (center, width s, depth h) of the two wells, and the weak bowl c that keeps runs bounded
SHARP = ((-1.0, 0.0), 0.2, 1.0)
FLAT = ((1.2, 0.0), 1.0, 0.8)
BOWL = 0.1
SHARP_CURVATURE = SHARP[2] / SHARP[1] ** 2 + BOWL
FLAT_CURVATURE = FLAT[2] / FLAT[1] ** 2 + BOWL
FLAT_THRESHOLD = math.sqrt(SHARP_CURVATURE * FLAT_CURVATURE)
"""A point whose top Hessian eigenvalue is below this is flatter than the sharp minimum's basin."""
BOX = ((-2.5, 2.5), (-1.5, 1.5))


def sharp_flat_loss(w: torch.Tensor) -> torch.Tensor:
    """The toy loss f(w) for ``w`` of shape (..., 2)."""
    total = 0.5 * BOWL * (w * w).sum(-1)
    for (cx, cy), width, depth in (SHARP, FLAT):
        r2 = (w[..., 0] - cx) ** 2 + (w[..., 1] - cy) ** 2
        total = total - depth * torch.exp(-r2 / (2 * width ** 2))
    return total


def sharp_flat_grad(w: torch.Tensor) -> torch.Tensor:
    """Analytic gradient of :func:`sharp_flat_loss` for one point (2,)."""
    grad = BOWL * w
    for (cx, cy), width, depth in (SHARP, FLAT):
        d = w - torch.tensor((cx, cy), dtype=w.dtype)
        grad = grad + d * (depth / width ** 2 * torch.exp(-(d * d).sum() / (2 * width ** 2)))
    return grad
