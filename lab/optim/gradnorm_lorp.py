"""GradNormLoRP: weight normalization (magnitude x direction) with a GaLore-projected direction.

Paper: "Gradient Weight-normalized Low-rank Projection for Efficient LLM Training", Huang et al.,
arXiv 2412.19616 (AAAI 2025). Only the paper's two summary equations could be checked:

    W = M (W0 + I J) / ||W0 + I J||_c            weight-normalized, low-rank-updated weight
    D~_t = U_t eta_t(U_t^T D_t V_t) V_t^T        the gradient D_t seen through a rank-r projection

(M = magnitudes, W0 = the initial weight, I J = a rank-r update, ||.||_c =
column-wise norm, D_t = gradient, U_t, V_t = projectors, eta_t = the inner optimizer.)

The update: implemented here, for a 2-D weight W (m x n) with gradient G, one magnitude g per row
(``norm_dim=1``: per output unit of an ``nn.Linear``), direction v, lr, betas b1, b2, eps,
weight decay lambda, scale alpha, Adam moments m, s of the projected direction gradient R, and
Adam_g(.) the magnitudes' own Adam direction:

    g = ||W_i||  (m x 1),  v = W / g              re-anchor: v has unit rows (free: weight norm
                                                   is invariant to the scale of v)
    dL/dg = sum_j v_ij G_ij                        exact weight-norm calculus at ||v_i|| = 1
    D = dL/dv = g (G - v dL/dg)                    the radial part of each row removed
    R = project(D);  m, s <- Adam moments of R;  N = m / (sqrt(s) + eps)     GaLore on D
    g' = g - c Adam_g(dL/dg);  v' = v - c alpha lift(N);  c = lr sqrt(1-b2^t)/(1-b1^t)
    W <- g' v' / ||v'_i||;  then W <- W - lr lambda W

Why this realizes ``W0 + I J``: between two refreshes of the projector P, every direction update
``lift(N) = N P`` has rank <= r in the same row space, so their sum is a rank-r ``I J`` with
``J = P`` -- the low-rank update of the paper's first equation, without storing I and J.

Where it departs from GaLore: GaLore projects the gradient of W itself; GradNormLoRP splits W into
magnitude x direction, gives the magnitudes their own small Adam, and projects only the gradient
of the (unit-row) direction, with the radial part of each row removed.

Choices (where the public material is silent; each documented, none verified against the paper):
- D_t is the gradient with respect to the direction v (not W), taken at the unit anchor, so that the
  angular step of a row is about lr whatever its norm.
- One magnitude per row of torch's (out, in) layout, i.e. per output unit (as Salimans & Kingma's
  weight normalization and the reference code's row-wise split; the paper's "column-wise" norm
  is the same thing in the x W convention). ``norm_dim=0`` normalizes columns instead.
- The magnitude M gets its own (tiny) Form-B Adam, with the same lr. It is a signed scalar, as g
  in weight normalization: a row whose direction points away from where the loss wants it goes
  through g = 0 and comes out flipped (the next step re-anchors g = ||W_i|| >= 0). Clamping g at 0
  instead kills such rows for ever (their direction gradient vanishes with g): on a 16 x 12
  matrix quadratic from a small random start a quarter of the rows died and the loss stalled.
  A row that is exactly zero has no direction and stays zero.
- Projection: one-sided GaLore ``proj_type="std"`` by default (the reference code's); the paper's
  two-sided equation is ``proj_type="full"``. SVD of D, refreshed every ``update_proj_gap`` steps,
  moments kept across refreshes (as GaLore). Defaults from the reference code: rank 256, T 200,
  alpha 1.0, eps 1e-6; lr 1e-3, weight_decay 0 (applied after the update, HF order).
- The reference code is not used as a peer (its trainer never writes the weight back).

State per weight (m >= n, right projection): ``exp_avg``/``exp_avg_sq`` (m x r), ``projector`` (r x n),
``mag_exp_avg``/``mag_exp_avg_sq`` (one per row), ``step``: ``2 m r + n r + 2 m`` numbers.
Full-rank path (non-2-D tensors, groups with ``rank=None``): Form-B AdamW as in GaLore, no
normalization. As GaLore: half-precision weights keep float32 state, ``svd="lowrank"`` refreshes
with a randomized SVD, ``fused=True`` compiles the group's Adam moments and directions, and a
NaN/Inf gradient raises ``ValueError`` naming the parameter (``check_finite=False`` to opt out).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from lab.checks import check_choice
from lab.optim._common import check_finite, evaluate, gather, path_options
from lab.optim.projection import (LowRankBase, adam_directions, check_adam_args,
                                  check_lowrank_args, compute, project, project_back, work_dtype)
from lab.registry import register


def weight_norm_grads(weight: Tensor, grad: Tensor, norm_dim: int = 1, eps: float = 1e-12,
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(g, v, dL/dg, dL/dv)`` of ``W = g v / ||v||`` at the unit anchor ``v = W / ||W||``.

    Norms run over ``norm_dim`` (kept as a size-1 dim, so g broadcasts against W).
    """
    g = weight.norm(dim=norm_dim, keepdim=True)  # (m, 1)
    v = weight / g.clamp_min(eps)  # (m, n) unit rows
    grad_g = (v * grad).sum(dim=norm_dim, keepdim=True)  # dL/dg = <v_i, G_i>
    grad_v = g * (grad - v * grad_g)  # dL/dv = (g/||v||)(I - v v^T) G, with ||v|| = 1
    return g, v, grad_g, grad_v


@register("optimizer", "gradnorm_lorp",
          paper="Gradient Weight-normalized Low-rank Projection for Efficient LLM Training",
          arxiv="2412.19616", summary="GradNormLoRP: weight-normalized weights, GaLore-projected direction updates")
class GradNormLoRP(LowRankBase):
    """GradNormLoRP-AdamW.

    Args:
        params: parameters or param groups (``rank=None``: full-rank AdamW path).
        lr (eta), betas, eps, weight_decay (lambda): as :class:`~lab.optim.galore.GaLore`.
        rank (r), update_proj_gap (T), scale (alpha), proj_type, projection: the projector of the
            direction gradient, as in GaLore (``proj_type="full"`` is the paper's two-sided form).
        norm_dim: 1 = one magnitude per row (output unit), 0 = per column.
        svd: ``"exact"`` or ``"lowrank"`` (randomized SVD at each refresh).
        seed: seeds random projections.
        fused: the inner Adam steps as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, rank: int | None = 256,
                 update_proj_gap: int = 200, scale: float = 1.0, proj_type: str = "std",
                 projection: str = "svd", norm_dim: int = 1, svd: str = "exact", seed: int = 0,
                 fused: bool | None = None, check_finite: bool = True):
        check_adam_args(lr, betas, eps, weight_decay)
        check_lowrank_args(rank, update_proj_gap, scale, proj_type, projection, svd=svd)
        check_choice("norm_dim", norm_dim, (0, 1))
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
                        projection=projection, norm_dim=norm_dim, svd=svd,
                        **path_options("GradNormLoRP", foreach=None, fused=fused,
                                       check_finite=check_finite))
        super().__init__(params, defaults, seed=seed)
        for group in self.param_groups:
            check_adam_args(group["lr"], group["betas"], group["eps"], group["weight_decay"])
            check_lowrank_args(group["rank"], group["update_proj_gap"], group["scale"], group["proj_type"],
                               group["projection"], svd=group["svd"])

    @torch.no_grad()
    def step(self, closure=None):
        """One GradNormLoRP step; ``closure`` (optional) re-evaluates the loss."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            params, grads, states = gather(self, group)
            if not params:
                continue
            check_finite(self, group, params, grads)
            # collect every Adam input of the group (R and dL/dg, or the full gradient) ...
            plans, xs, ms, vs = [], [], [], []
            for p, grad, state in zip(params, grads, states):
                state["step"] += 1
                t = state["step"].item()
                grad = grad.to(work_dtype(p))
                if group["rank"] is None or p.dim() != 2:
                    if "exp_avg" not in state:
                        state.update(exp_avg=torch.zeros_like(grad), exp_avg_sq=torch.zeros_like(grad))
                    plans.append((p, state, t, None))
                    xs.append(grad)
                    ms.append(state["exp_avg"])
                    vs.append(state["exp_avg_sq"])
                    continue
                plan = self._normalized_inputs(p, grad, state, group, t)
                plans.append((p, state, t, plan))
                xs += [plan["low"], plan["grad_g"]]
                ms += [state["exp_avg"], state["mag_exp_avg"]]
                vs += [state["exp_avg_sq"], state["mag_exp_avg_sq"]]
            # ... one batched Adam (moments and Form-B directions) ...
            directions = iter(adam_directions(self, index, xs, ms, vs, group["betas"], group["eps"],
                                              bool(group.get("fused"))))
            # ... then each weight's update
            for p, state, t, plan in plans:
                step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                if plan is None:
                    p.add_(next(directions), alpha=-step_size)
                else:
                    n_dir, n_mag = next(directions), next(directions)
                    self._normalized_update(p, state, group, step_size, plan, n_dir, n_mag)
                if wd > 0:
                    p.add_(p, alpha=-lr * wd)  # W <- W - lr lambda W (after the update)
        return loss

    def _normalized_inputs(self, p: Tensor, grad: Tensor, state: dict, group: dict, t: float) -> dict:
        """Weight-norm split of ``grad``, projector refresh, ``R = project(D)``; state created."""
        dim = group["norm_dim"]
        g, v, grad_g, grad_v = weight_norm_grads(p.to(grad.dtype), grad, dim)
        if "projector" not in state or (t - 1) % group["update_proj_gap"] == 0:
            state["projector"] = compute(grad_v, group["rank"], method=group["projection"],
                                         proj_type=group["proj_type"], generator=self.generator,
                                         svd=group.get("svd", "exact"))
        low = project(grad_v, state["projector"])  # R = project(D)
        if "exp_avg" not in state:
            state.update(exp_avg=torch.zeros_like(low), exp_avg_sq=torch.zeros_like(low),
                         mag_exp_avg=torch.zeros_like(g), mag_exp_avg_sq=torch.zeros_like(g))
        return {"g": g, "v": v, "grad_g": grad_g, "low": low}

    def _normalized_update(self, p: Tensor, state: dict, group: dict, step_size: float, plan: dict,
                           n_dir: Tensor, n_mag: Tensor) -> None:
        # g' = g - c N_g (signed, as in weight normalization);  v' = v - c alpha lift(N)
        dim = group["norm_dim"]
        g_new = plan["g"] - step_size * n_mag
        v_new = plan["v"] - step_size * group["scale"] * project_back(n_dir, state["projector"], p.shape)
        # W = g' v' / ||v'||
        p.copy_(g_new * v_new / v_new.norm(dim=dim, keepdim=True).clamp_min(1e-12))


__all__ = ["GradNormLoRP", "weight_norm_grads"]
