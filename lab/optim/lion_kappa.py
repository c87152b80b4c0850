"""Lion-kappa: Lion with ``sign`` replaced by the (sub)gradient of a convex function kappa.

Paper: "Lion Secretly Solves Constrained Optimization: As Lyapunov Predicts", Chen et al. (with
Liu, Liang, Liu), arXiv 2310.05898. The nuclear-norm member comes from the same group's follow-up note
"Muon is a Nuclear Lion King".

The update: learning rate eps, weight decay lambda, momentum coefficients beta1, beta2, gradient g_t,
momentum m, interpolation c, kappa a convex function with (sub)gradient grad_kappa::

    c      = beta1 m + (1 - beta1) g_t          (the paper's n~ = -c: it stores negative gradients)
    theta <- theta (1 - eps lambda) - eps grad_kappa(c)
    m     <- beta2 m + (1 - beta2) g_t

Every kappa offered here has an odd gradient, ``grad_kappa(-c) = -grad_kappa(c)``, so storing the
EMA of +g (as Lion does) and subtracting gives the paper's iteration exactly.

What it solves: fixed points satisfy ``0 in grad f(x) + d kappa*(lambda x)``, i.e. the method
minimizes ``F(x) = f(x) + (1/lambda) kappa*(lambda x)`` (kappa* = convex conjugate). With a norm
kappa, kappa* is the indicator of the dual-norm unit ball, so the weight decay is a *constraint*:

| kappa            | grad_kappa(c)            | problem solved                                   |
|------------------|--------------------------|--------------------------------------------------|
| ``l1`` ||c||_1   | sign(c)                  | min f  s.t. ||x||_inf <= 1/lambda  (this is Lion) |
| ``l2`` ||c||_2   | c / ||c||_2 (0 at c = 0) | min f  s.t. ||x||_2 <= 1/lambda                  |
| ``half_l2``      | c                        | min f + (lambda/2) ||x||^2 (momentum GD with WD)  |
| ``nuclear``      | U V^T, c = U S V^T       | min f  s.t. ||X||_op <= 1/lambda (Muon-like)      |

Where it departs from Lion: only ``grad_kappa`` (``kappa="l1"`` is Lion).

Choices (where the paper leaves room):
- Norms are taken **per tensor** (the constraint set is a product of per-tensor balls, not one
  global ball).
- ``grad_kappa(0) = 0``.
- For ``nuclear`` a tensor is viewed as the matrix ``(size(0), numel/size(0))`` (a 1-D tensor is
  a 1 x n matrix, so there ``nuclear`` coincides with ``l2``), and singular values below
  ``max(S) * n * machine_eps`` are dropped (the polar factor of the non-null part).
- The Nesterov-like term uses m_t, not m_{t+1} (the paper's form), so ``kappa="l1"`` reproduces
  Lion bit for bit.
- With ``l2`` and ``nuclear`` each tensor moves by eps (l2 norm) resp. eps (operator norm) per
  step regardless of its size: a different learning-rate scale than Lion.

State (per parameter): ``step``, ``exp_avg`` (1 x p).
Paths: eager foreach / per-tensor, and ``fused=True`` (:func:`lion_kappa_fused` compiled; the
nuclear kappa's SVD runs inside the graph as an external kernel). A NaN/Inf gradient raises
before the step (``check_finite=False`` to opt out).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from lab.checks import check_betas, check_choice, check_nonneg, check_positive
from lab.optim import _fused
from lab.optim._common import (by_device_dtype, decoupled_weight_decay, evaluate, keep_path_options,
                               path_options, prepare, zeros)
from lab.registry import register

KAPPAS = ("l1", "l2", "half_l2", "nuclear")


def polar(c: Tensor) -> Tensor:
    """``U V^T`` of the thin SVD of ``c`` viewed as ``(size(0), -1)``: the gradient of ||.||_*."""
    matrix = c.reshape(c.shape[0], -1) if c.dim() > 1 else c.reshape(1, -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    tol = s.max().clamp_min(torch.finfo(s.dtype).tiny) * max(matrix.shape) * torch.finfo(s.dtype).eps
    keep = (s > tol).to(s.dtype)  # (r,)  singular directions that carry mass
    return ((u * keep) @ vh).reshape(c.shape)


def grad_kappa(kappa: str, c: Tensor) -> Tensor:
    """(Sub)gradient of kappa at ``c``, per tensor, with ``grad_kappa(0) = 0``."""
    if kappa == "l1":
        return c.sign()
    if kappa == "l2":
        norm = torch.linalg.vector_norm(c)
        return c * (1.0 / norm) if norm > 0 else torch.zeros_like(c)
    if kappa == "half_l2":
        return c
    return polar(c)


def _grad_kappa_foreach(kappa: str, c: list[Tensor]) -> None:
    """In-place ``c <- grad_kappa(c)`` over a list (norms batched with ``_foreach_norm``)."""
    if kappa == "l1":
        torch._foreach_sign_(c)
    elif kappa == "l2":
        norms = torch.stack(torch._foreach_norm(c)).tolist()
        torch._foreach_mul_(c, [1.0 / n if n > 0 else 0.0 for n in norms])
    elif kappa == "nuclear":
        for i, ci in enumerate(c):
            c[i] = polar(ci)


def lion_kappa(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *, kappa: str,
               lr: float, beta1: float, beta2: float, weight_decay: float, foreach: bool) -> None:
    """Functional Lion-kappa step on lists of tensors (in place on ``params`` and ``exp_avgs``)."""
    decoupled_weight_decay(params, lr, weight_decay, foreach)
    if foreach:
        for p, g, m in by_device_dtype(params, grads, exp_avgs):
            c = list(torch._foreach_lerp(m, g, 1 - beta1))  # c = beta1 m + (1 - beta1) g
            _grad_kappa_foreach(kappa, c)
            torch._foreach_add_(p, c, alpha=-lr)             # theta <- theta - eps grad_kappa(c)
            torch._foreach_lerp_(m, g, 1 - beta2)           # m <- beta2 m + (1 - beta2) g
        return
    for p, g, m in zip(params, grads, exp_avgs):
        c = torch.lerp(m, g, 1 - beta1)
        p.add_(grad_kappa(kappa, c), alpha=-lr)
        m.lerp_(g, 1 - beta2)


def lion_kappa_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                     steps: list[Tensor], *, lr: Tensor, beta1: Tensor, beta2: Tensor,
                     weight_decay: Tensor, kappa: str, maximize: bool) -> None:
    """:func:`lion_kappa` for ``torch.compile`` (hyperparameters as 0-d tensors)."""
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    torch._foreach_mul_(params, 1 - lr * weight_decay)           # theta (1 - eps lambda)
    c = _fused.lerp(exp_avgs, grads, 1 - beta1)                 # c = beta1 m + (1 - beta1) g
    if kappa == "l1":
        c = torch._foreach_sign(c)
    elif kappa == "l2":                                          # c/||c||, 0 at c = 0
        # per-tensor norms as inductor reductions (``_foreach_norm`` stays an external call
        # that needs c written out and read back): c is recomputed from m and g in the update
        norms = [torch.linalg.vector_norm(ci) for ci in c]
        c = [torch.where(n > 0, ci / n, torch.zeros_like(ci)) for ci, n in zip(c, norms)]
    elif kappa == "nuclear":
        c = [polar(ci) for ci in c]
    torch._foreach_add_(params, torch._foreach_mul(c, -lr))      # theta - eps grad_kappa(c)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)             # m <- beta2 m + (1 - beta2) g


def composite_objective(kappa: str, f_value: float, params: Iterable[Tensor], weight_decay: float
                        ) -> float:
    """``F(x) = f(x) + (1/lambda) kappa*(lambda x)``, the objective Lion-kappa minimizes.

    For norm kappas kappa* is an indicator: ``inf`` outside the per-tensor dual ball of radius
    1/lambda. With ``weight_decay = 0`` there is no constraint and F = f.
    """
    total = float(f_value)
    if weight_decay == 0:
        return total
    for x in params:
        x = x.detach()
        if kappa == "half_l2":
            total += 0.5 * weight_decay * float(x.pow(2).sum())
            continue
        if kappa == "l1":
            dual = float(x.abs().max())
        elif kappa == "l2":
            dual = float(torch.linalg.vector_norm(x))
        else:
            dual = float(torch.linalg.matrix_norm(x.reshape(x.shape[0], -1) if x.dim() > 1
                                                  else x.reshape(1, -1), ord=2))
        if dual * weight_decay > 1 + 1e-12:
            return float("inf")
    return total


@register("optimizer", "lion_kappa",
          paper="Lion Secretly Solves Constrained Optimization: As Lyapunov Predicts",
          arxiv="2310.05898")
class LionKappa(torch.optim.Optimizer):
    """Lion-kappa: Lion with sign replaced by grad kappa (l1, l2, half_l2 or nuclear).

    Args:
        params: parameters or parameter groups.
        lr (eps): learning rate, default 1e-4 (Lion's).
        betas (beta1, beta2): interpolation and momentum coefficients, default (0.9, 0.99).
        weight_decay (lambda): decoupled weight decay; with a norm kappa, 1/lambda is the radius
            of the constraint set. Default 0.
        kappa: ``"l1"`` (= Lion), ``"l2"``, ``"half_l2"`` or ``"nuclear"``; per tensor.
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path (None = yes; the SVD of ``nuclear`` stays a loop).
        fused: run the whole update as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, kappa: str = "l1", *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, check_finite: bool = True):
        check_positive("lr", lr)
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        check_choice("kappa", kappa, KAPPAS)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, kappa=kappa,
                        maximize=maximize, **path_options("LionKappa", foreach=foreach, fused=fused,
                                                          check_finite=check_finite))
        super().__init__(params, defaults)
        keep_path_options(self)

    @torch.no_grad()
    def step(self, closure=None):
        """One Lion-kappa step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            prepared = prepare(self, group, lambda p: {"exp_avg": zeros(p)})
            if prepared is None:
                continue
            params, grads, states, _, foreach, fused = prepared
            beta1, beta2 = group["betas"]
            if fused:
                _fused.run(self, index, lion_kappa_fused,
                           (params, grads, [s["exp_avg"] for s in states]), states,
                           dict(lr=group["lr"], beta1=beta1, beta2=beta2,
                                weight_decay=group["weight_decay"]),
                           kappa=group["kappa"], maximize=group["maximize"])
                continue
            lion_kappa(params, grads, [s["exp_avg"] for s in states], kappa=group["kappa"],
                       lr=group["lr"], beta1=beta1, beta2=beta2,
                       weight_decay=group["weight_decay"], foreach=foreach)
        return loss


__all__ = ["LionKappa", "lion_kappa", "lion_kappa_fused", "grad_kappa", "polar", "composite_objective", "KAPPAS"]
