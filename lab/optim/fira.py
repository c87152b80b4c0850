"""Fira: GaLore plus the out-of-subspace residual, rescaled by the low-rank Adam's own gain.

Paper: "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?", Chen et al.,
arXiv 2410.01623 (reference code: xichen-fy/Fira, PyPI ``fira`` ``FiraAdamW``).

The update: for a 2-D weight W with gradient G (m x n), projector P, scale alpha, lr, betas b1, b2,
eps and weight decay lambda (all as in :mod:`lab.optim.galore`; project/lift = multiply by P
and back), at step t:

    R = project(G);  m, v <- Adam moments of R;  N = m / (sqrt(v) + eps)      GaLore part
    S_raw = G - alpha lift(R)                                                 residual, outside P
    phi_i = ||N_i|| / (||R_i|| + 1e-8)                                        norm-based scaling
    S = phi * S_raw                   (i = rows for a right projection, columns for a left one)
    limiter: l = max(||S||_F / (s_prev + 1e-8), gamma) / gamma;  S <- S / l;  s_prev <- ||S||_F
    W <- W - lr sqrt(1-b2^t)/(1-b1^t) (alpha lift(N) + S);   W <- W - lr lambda W

Symbols: phi = how much the low-rank Adam amplified each row (column) of its input, used as a
stand-in for what a full-rank Adam would do to the residual; gamma = ``gamma`` (1.01: the residual's
norm may grow by at most 1 % per step); s_prev = the previous step's post-limit residual norm
(state ``scaling_grad``, a scalar; on the first step it is only recorded).

Intuition: GaLore throws the residual S_raw away; Fira keeps it (so the update is full-rank)
without storing any state for it, borrowing the low-rank Adam's per-row gain, and damps sudden
gradient spikes with the norm-growth limiter.

Where it departs from GaLore: only the added ``S`` term; bias correction multiplies ``S`` too (as
in the reference).

Choices:
- The scaling axis is taken from the projection side (right -> per row, left -> per column); the
  reference decides it from R's shape, which agrees whenever the rank is at most the projected
  dimension (always true here, ranks are clamped).
- Two-sided ``"full"`` projection is not offered (its R is r x r and has no per-row gain):
  ``ValueError``.
- On the first step the limiter only records ||S||_F (there is no s_prev to compare with).
- Pitfall kept on purpose (as the reference): rows whose projected gradient is zero get phi = 0
  and lose their residual.

Defaults: those of the reference's ``FiraAdamW`` and ``divide_params`` (lr 1e-3, eps 1e-6,
weight_decay 0, rank 8, update_proj_gap 200, alpha 1.0); gamma = 1.01 is hard-coded there. The
repository's LLaMA pre-training scripts use lr 0.01, alpha 0.25, rank 128-256.
Memory: GaLore's plus one scalar per matrix. Full-rank path: as GaLore (Form-B AdamW). As GaLore:
``svd="lowrank"`` (randomized SVD at each projector refresh), ``fused=True`` (the group's Adam
moments and directions compiled; projections and the residual stay eager), ``check_finite``
(a NaN/Inf gradient raises ``ValueError`` naming the parameter before anything changes), and
float32 state and arithmetic for half-precision weights (in float16 the 1e-8 guards round to 0
and the first step would be 0/0).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from lab.checks import check_positive
from lab.optim.galore import GaLore
from lab.optim.projection import project_back
from lab.registry import register


def norm_growth_limit(residual: Tensor, previous: Tensor | None, gamma: float) -> tuple[Tensor, Tensor]:
    """Fira's limiter: ``(S / l, new s_prev)`` with ``l = max(||S|| / (s_prev + 1e-8), gamma) / gamma``.

    With no previous norm (first step) S is returned unchanged and its norm recorded.
    """
    norm = residual.norm()
    if previous is None:
        return residual, norm
    limiter = torch.clamp(norm / (previous + 1e-8), min=gamma) / gamma
    return residual / limiter, norm / limiter


@register("optimizer", "fira", paper="Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?",
          arxiv="2410.01623", summary="Fira: GaLore plus the norm-scaled, norm-growth-limited full-rank residual")
class Fira(GaLore):
    """Fira-AdamW: every argument as :class:`~lab.optim.galore.GaLore`, plus

    Args:
        gamma (gamma): norm-growth limit, the largest allowed ratio ``||S_t|| / ||S_{t-1}||``.
    """

    proj_types = ("std", "reverse_std", "right", "left")

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, rank: int | None = 8,
                 update_proj_gap: int = 200, scale: float = 1.0, proj_type: str = "std",
                 projection: str = "svd", gamma: float = 1.01, svd: str = "exact", seed: int = 0,
                 fused: bool | None = None, check_finite: bool = True):
        check_positive("gamma", gamma)
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1 (a growth limit), got {gamma}")
        super().__init__(params, lr, betas, eps, weight_decay, rank=rank, update_proj_gap=update_proj_gap,
                         scale=scale, proj_type=proj_type, projection=projection, svd=svd, seed=seed,
                         fused=fused, check_finite=check_finite)
        self.defaults["gamma"] = gamma  # also for groups added later with add_param_group
        for group in self.param_groups:
            group.setdefault("gamma", gamma)

    def _full_direction(self, p: Tensor, grad: Tensor, low: Tensor, direction: Tensor,
                        state: dict, group: dict) -> Tensor:
        proj, alpha = state["projector"], group["scale"]
        # S_raw = G - alpha lift(R)
        residual = grad - alpha * project_back(low, proj, p.shape)  # (m, n)
        # phi = ||N||_dim / (||R||_dim + 1e-8): per row for a right projection, per column for left
        right = "right" in proj or "cols" in proj
        dim = 1 if right else 0
        phi = direction.norm(dim=dim) / (low.norm(dim=dim) + 1e-8)
        residual = residual * (phi.unsqueeze(1) if right else phi.unsqueeze(0))
        residual, state["scaling_grad"] = norm_growth_limit(residual, state.get("scaling_grad"), group["gamma"])
        return alpha * project_back(direction, proj, p.shape) + residual


__all__ = ["Fira", "norm_growth_limit"]
