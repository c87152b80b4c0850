"""diffGrad: Adam with a friction coefficient from the change of the gradient.

Paper: "diffGrad: An Optimization Method for Convolutional Neural Networks", Dubey et al.,
arXiv 1909.11015. Equations follow the authors' ``diffGrad_v2.py`` (their ``diffGrad.py`` keeps a
reference to ``p.grad`` instead of a copy, so with in-place zeroing the change is always 0).

The update: per step t (learning rate eta, betas beta1, beta2, eps, L2 coefficient lambda, gradient
g, moments m and v, previous gradient g_prev = 0 at t=1, friction coefficient xi)::

    g  <- g + lambda theta                              coupled (L2) weight decay
    m  <- beta1 m + (1 - beta1) g
    v  <- beta2 v + (1 - beta2) g^2
    xi  = sigmoid(|g_prev - g|) = 1 / (1 + exp(-|g_prev - g|))     in [0.5, 1)
    g_prev <- g                                         (a copy; includes the L2 term)
    theta <- theta - eta sqrt(1 - beta2^t)/(1 - beta1^t) * xi m / (sqrt(v) + eps)

Intuition: where the gradient barely changes between steps (flat region or near an optimum)
xi -> 0.5 and the step is halved ("friction"); where it changes fast xi -> 1 and the step is
Adam's. diffGrad never steps further than Adam, and at most a factor 2 shorter.

Where it departs from Adam: the factor xi on the momentum. Adam's eps is in the legacy place (Form
B: ``sqrt(v) + eps`` with the bias corrections in the step size), so with eps = 0 a diffGrad step
is exactly xi times a torch.optim.Adam step from the same moments.

Choices:
- The L2 term is added to a *new* gradient tensor; ``p.grad`` is left untouched (the reference
  adds it in place).
- g_prev is a copy of the gradient (as ``diffGrad_v2.py``), including the L2 term, so the result
  does not depend on how the gradients are zeroed.

State (per parameter): ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v), ``previous_grad`` (3 x p).
Paths: eager foreach (default) or per-tensor loop; ``fused=True`` runs :func:`diffgrad_fused`
compiled (:mod:`lab.optim._fused`). A NaN/Inf gradient raises before the step
(``check_finite=False`` to opt out).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

from lab.checks import check_betas, check_nonneg, check_positive
from lab.optim import _fused
from lab.optim._common import (bias_correction, by_step, coupled_weight_decay, evaluate,
                               keep_path_options, path_options, prepare, zeros)
from lab.registry import register


def friction(previous_grad: Tensor, grad: Tensor) -> Tensor:
    """``xi = sigmoid(|g_prev - g|)``, elementwise, in [0.5, 1)."""
    return torch.sigmoid((previous_grad - grad).abs_())


def diffgrad(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
             exp_avg_sqs: list[Tensor], previous_grads: list[Tensor], steps: list[float], *,
             lr: float, beta1: float, beta2: float, eps: float, foreach: bool) -> None:
    """Functional diffGrad step (L2 term already in ``grads``); in place on params and state."""
    for t, (p, g, m, v, prev) in by_step(steps, params, grads, exp_avgs, exp_avg_sqs, previous_grads):
        # eta sqrt(1 - beta2^t) / (1 - beta1^t)
        step_size = lr * math.sqrt(bias_correction(beta2, t)) / bias_correction(beta1, t)
        if foreach:
            torch._foreach_lerp_(m, g, 1 - beta1)                 # m <- beta1 m + (1-beta1) g
            torch._foreach_mul_(v, beta2)                         # v <- beta2 v + (1-beta2) g^2
            torch._foreach_addcmul_(v, g, g, value=1 - beta2)
            torch._foreach_sub_(prev, g)                          # xi = sigmoid(|g_prev - g|),
            torch._foreach_abs_(prev)                             # computed in the g_prev buffer
            torch._foreach_sigmoid_(prev)
            torch._foreach_mul_(prev, m)                          # xi m
            denom = torch._foreach_sqrt(v)                        # sqrt(v) + eps
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(p, prev, denom, value=-step_size)
            torch._foreach_copy_(prev, g)                         # g_prev <- g
            continue
        for pi, gi, mi, vi, previ in zip(p, g, m, v, prev):
            mi.lerp_(gi, 1 - beta1)
            vi.mul_(beta2).addcmul_(gi, gi, value=1 - beta2)
            xi_m = previ.sub_(gi).abs_().sigmoid_().mul_(mi)
            pi.addcdiv_(xi_m, vi.sqrt().add_(eps), value=-step_size)
            previ.copy_(gi)


def diffgrad_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                   exp_avg_sqs: list[Tensor], previous_grads: list[Tensor], steps: list[Tensor], *,
                   lr: Tensor, beta1: Tensor, beta2: Tensor, eps: Tensor, weight_decay: Tensor,
                   maximize: bool) -> None:
    """:func:`diffgrad` (with its L2 term) for ``torch.compile`` (hyperparameters as 0-d tensors)."""
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    grads = torch._foreach_add(grads, torch._foreach_mul(params, weight_decay))   # g + lambda theta
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)                  # m <- beta1 m + (1-beta1) g
    torch._foreach_mul_(exp_avg_sqs, beta2)                           # v <- beta2 v + (1-beta2) g^2
    torch._foreach_add_(exp_avg_sqs, torch._foreach_mul(torch._foreach_mul(grads, grads), 1 - beta2))
    step_sizes = _fused.per_tensor([lr * (1 - beta2 ** t).sqrt() / (1 - beta1 ** t)
                                    for t in (step.to(torch.float64) for step in steps)])
    for p, g, m, v, prev, step_size in zip(params, grads, exp_avgs, exp_avg_sqs, previous_grads, step_sizes):
        xi = torch.sigmoid((prev - g).abs())                          # xi = sigmoid(|g_prev - g|)
        p.sub_(step_size * (xi * m / (v.sqrt() + eps)))
        prev.copy_(g)                                                 # g_prev <- g


@register("optimizer", "diffgrad",
          paper="diffGrad: An Optimization Method for Convolutional Neural Networks",
          arxiv="1909.11015")
class DiffGrad(torch.optim.Optimizer):
    """diffGrad: Adam whose momentum is scaled by xi = sigmoid(|g_prev - g|).

    Args:
        params: parameters or parameter groups.
        lr (eta): learning rate, default 1e-3.
        betas (beta1, beta2): EMA coefficients, default (0.9, 0.999).
        eps: denominator term (Form B, added to sqrt(v)), default 1e-8.
        weight_decay (lambda): L2 coefficient added to the gradient, default 0.
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path (None = yes).
        fused: run the whole update as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, check_finite: bool = True):
        check_positive("lr", lr)
        check_betas(betas)
        check_nonneg("eps", eps)
        check_nonneg("weight_decay", weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        maximize=maximize, **path_options("DiffGrad", foreach=foreach, fused=fused,
                                                         check_finite=check_finite))
        super().__init__(params, defaults)
        keep_path_options(self)

    @torch.no_grad()
    def step(self, closure=None):
        """One diffGrad step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            prepared = prepare(self, group, lambda p: {
                "exp_avg": zeros(p), "exp_avg_sq": zeros(p), "previous_grad": zeros(p)})
            if prepared is None:
                continue
            params, grads, states, steps, foreach, fused = prepared
            beta1, beta2 = group["betas"]
            if fused:
                _fused.run(self, index, diffgrad_fused,
                           (params, grads, [s["exp_avg"] for s in states],
                            [s["exp_avg_sq"] for s in states], [s["previous_grad"] for s in states]),
                           states, dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                        weight_decay=group["weight_decay"]),
                           maximize=group["maximize"])
                continue
            grads = coupled_weight_decay(grads, params, group["weight_decay"], foreach)
            diffgrad(params, grads, [s["exp_avg"] for s in states],
                     [s["exp_avg_sq"] for s in states], [s["previous_grad"] for s in states], steps,
                     lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], foreach=foreach)
        return loss


__all__ = ["DiffGrad", "diffgrad", "diffgrad_fused", "friction"]
