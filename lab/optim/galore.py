"""GaLore: Adam whose moments live in a rank-r subspace of each weight's gradient.

Paper: "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", Zhao et al.,
arXiv 2403.03507 (reference code: galore-torch ``GaLoreAdamW``).

The update: for a 2-D weight ``W`` (m x n, m >= n under ``proj_type="std"``) with gradient ``G_t``,
at step t (lr, betas b1, b2, eps; m_t, v_t the Adam moments of the projected gradient R_t):

    P_t = top-r right singular vectors of G_t  (r x n),  recomputed when (t-1) % T == 0, else P_{t-1}
    R_t = G_t P_t^T                                      (m x r)   project
    m_t = b1 m_{t-1} + (1-b1) R_t;   v_t = b2 v_{t-1} + (1-b2) R_t^2     Adam moments, m x r
    N_t = m_t / (sqrt(v_t) + eps)
    W  <- W - lr sqrt(1-b2^t)/(1-b1^t) * alpha * N_t P_t                 lift back (alpha = ``scale``)
    W  <- W - lr lambda W                                                decoupled decay, after

(left projection, ``P (m x r)``, ``R = P^T G``, lift ``P N``, when m < n). Symbols: r = ``rank``,
T = ``update_proj_gap``, alpha = ``scale``, lambda = ``weight_decay``.

Intuition: the gradient of a weight matrix is nearly low-rank, so Adam's two moments can be kept
for R only: memory per matrix ``2 m r + n r`` numbers instead of ``2 m n``. The update is low-rank
within each window of T steps, but the subspace moves when P is refreshed.

Where it departs from AdamW (its parent): the moments see the *projected* gradient; the epsilon is
"Form B" (``sqrt(v) + eps`` without bias correction inside, default eps 1e-6 as galore-torch); the
weight decay is applied *after* the update (HF order). The moments are not reset when P changes
(they live in the old basis for a while, by design). At full rank GaLore is still not Adam: the
per-coordinate adaptivity acts in the rotated basis ``G P^T`` (equal only if P is a permutation).

Full-rank path: parameters that are not 2-D (biases, norms), and every parameter of a group with
``rank=None``, get the same Form-B AdamW step on their full gradient (as galore-torch's non-GaLore
groups).

Defaults: galore-torch's (lr 1e-3, eps 1e-6, weight_decay 0, ``update_proj_gap`` 200, ``scale`` 1.0
-- the projector's own default); rank 128 is the repository's LLaMA pre-training recipe, whose
scripts pair it with ``scale`` 0.25 and lr 0.01.

Choices (where the reference leaves room):
- ``projection="random"`` (a random orthonormal P from ``seed``) and ``"coordinates"`` are offered
  beside the paper's SVD.
- The SVD runs in the weight's dtype (float32 for half precision).
- The refresh counter is per parameter, read before increment (refresh at calls 1, T+1, 2T+1,
  ..., as galore-torch; ``pytorch_optimizer.GaLore`` refreshes one step earlier, at 1, T, 2T).
- A rank larger than the projected dimension is clamped to it.
- ``svd="lowrank"`` draws its random test matrix from the optimizer's own generator (``seed``),
  not from the global RNG; the generator state is saved in ``state_dict()``, so a resumed run
  refreshes with the same subspaces.

State per weight: ``step``, ``exp_avg`` and ``exp_avg_sq``
(shape of R), ``projector`` (see :mod:`lab.optim.projection`). Half-precision weights keep that
state in float32 and compute the update in float32.

``svd="lowrank"``: the refresh uses a randomized SVD (:func:`lab.optim.projection.randomized_svd`,
the Halko et al. range finder of ``torch.svd_lowrank`` with oversampling 8 and 2 power
iterations) instead of the exact one: O(m n r) instead of O(m n min(m, n)) per refresh.
Its subspace captures nearly the energy of the exact top-r one when the spectrum decays
(``benchmarks/optim_memory.py`` reports the ratio; a test bounds it).
``fused=True``: the Adam moments and directions of a param group run as one compiled region per
device/dtype (:func:`lab.optim.projection.adam_directions`); projections stay eager.
A NaN/Inf gradient raises ``ValueError`` naming the parameter before anything changes
(``check_finite=False`` to opt out); without the check it would fail inside the SVD.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from lab.optim._common import check_finite, evaluate, gather, path_options
from lab.optim.projection import (LowRankBase, adam_directions, check_adam_args,
                                  check_lowrank_args, compute, project, project_back, work_dtype)
from lab.registry import register


@register("optimizer", "galore", paper="GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
          arxiv="2403.03507", summary="GaLore: Adam moments on a rank-r SVD projection of each weight's gradient")
class GaLore(LowRankBase):
    """GaLore-AdamW.

    Args:
        params: parameters or param groups; a group may override any keyword below
            (``rank=None`` puts a group on the full-rank AdamW path).
        lr (eta): learning rate.
        betas (beta1, beta2): EMA coefficients of the moments.
        eps (epsilon): added to ``sqrt(v)`` (Form B).
        weight_decay (lambda): decoupled decay, applied after the update.
        rank (r): subspace rank for 2-D weights (clamped to the projected dimension).
        update_proj_gap (T): steps between projector refreshes.
        scale (alpha): multiplies the lifted update.
        proj_type: ``"std"``, ``"reverse_std"``, ``"right"``, ``"left"`` or ``"full"``.
        projection: ``"svd"`` (paper), ``"random"`` or ``"coordinates"``.
        svd: ``"exact"`` (``torch.linalg.svd``) or ``"lowrank"`` (randomized, :func:`~lab.optim.projection.randomized_svd`).
        seed: seeds the generator of random projections and of ``svd="lowrank"``.
        fused: the inner Adam steps as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    proj_types: tuple[str, ...] = ("std", "reverse_std", "right", "left", "full")

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, rank: int | None = 128,
                 update_proj_gap: int = 200, scale: float = 1.0, proj_type: str = "std",
                 projection: str = "svd", svd: str = "exact", seed: int = 0,
                 fused: bool | None = None, check_finite: bool = True):
        check_adam_args(lr, betas, eps, weight_decay)
        check_lowrank_args(rank, update_proj_gap, scale, proj_type, projection, proj_types=self.proj_types,
                           svd=svd)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
                        projection=projection, svd=svd,
                        **path_options(type(self).__name__, foreach=None, fused=fused,
                                       check_finite=check_finite))
        super().__init__(params, defaults, seed=seed)
        for group in self.param_groups:  # a group's own overrides must be valid too
            check_adam_args(group["lr"], group["betas"], group["eps"], group["weight_decay"])
            check_lowrank_args(group["rank"], group["update_proj_gap"], group["scale"], group["proj_type"],
                               group["projection"], proj_types=self.proj_types, svd=group["svd"])

    @torch.no_grad()
    def step(self, closure=None):
        """One GaLore step; ``closure`` (optional) re-evaluates the loss."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            params, grads, states = gather(self, group)
            if not params:
                continue
            check_finite(self, group, params, grads)
            works, lows, lowrank, steps = [], [], [], []
            for p, grad, state in zip(params, grads, states):
                state["step"] += 1
                t = state["step"].item()
                grad = grad.to(work_dtype(p))            # float32 for half-precision weights
                is_low = group["rank"] is not None and p.dim() == 2
                if is_low:
                    # refresh P at calls 1, T+1, 2T+1, ... (counter read before the increment)
                    if "projector" not in state or (t - 1) % group["update_proj_gap"] == 0:
                        state["projector"] = compute(grad, group["rank"], method=group["projection"],
                                                     proj_type=group["proj_type"], generator=self.generator,
                                                     svd=group.get("svd", "exact"))
                    low = project(grad, state["projector"])  # R = G P^T   (m, r)
                else:
                    low = grad
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(low)
                    state["exp_avg_sq"] = torch.zeros_like(low)
                works.append(grad)
                lows.append(low)
                lowrank.append(is_low)
                steps.append(t)
            # m, v <- Adam moments of R;  N = m / (sqrt(v) + eps)
            directions = adam_directions(self, index, lows, [s["exp_avg"] for s in states],
                                         [s["exp_avg_sq"] for s in states], group["betas"],
                                         group["eps"], bool(group.get("fused")))
            for p, grad, low, direction, state, is_low, t in zip(params, works, lows, directions,
                                                                  states, lowrank, steps):
                if is_low:
                    direction = self._full_direction(p, grad, low, direction, state, group)
                # W <- W - lr sqrt(1 - b2^t) / (1 - b1^t) * update
                step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                p.add_(direction, alpha=-step_size)
                if wd > 0:
                    # W <- W - lr lambda W   (after the update, HF/GaLore order)
                    p.add_(p, alpha=-lr * wd)
        return loss

    def _full_direction(self, p: Tensor, grad: Tensor, low: Tensor, direction: Tensor,
                        state: dict, group: dict) -> Tensor:
        """GaLore's full-size update before the step size: ``alpha * lift(N)``."""
        return group["scale"] * project_back(direction, state["projector"], p.shape)


__all__ = ["GaLore"]
