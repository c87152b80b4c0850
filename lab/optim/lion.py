"""Lion: evolved sign momentum.

Paper: "Symbolic Discovery of Optimization Algorithms", Chen et al., arXiv 2302.06675.

The update: per step t, for each parameter theta with gradient g_t (learning rate eta, weight decay lambda,
momentum coefficients beta1, beta2, exp_avg m, m_0 = 0)::

    theta <- theta (1 - eta lambda)                 decoupled weight decay, on theta_{t-1}
    c      = beta1 m + (1 - beta1) g_t              interpolation used for the update
    theta <- theta - eta sign(c)                    every coordinate moves by exactly eta
    m     <- beta2 m + (1 - beta2) g_t              momentum tracked with the slower beta2

Intuition: only the *direction* of each coordinate's recent gradient matters; the interpolation
``c`` reacts to the current gradient (beta1 = 0.9) while the state remembers longer (beta2 = 0.99).
Where it departs from Adam and Signum: unlike Signum (sign of a single EMA) the update uses a
different beta than the state; unlike Adam it keeps one moment, no second one, so ``|update| = eta`` per
coordinate and the learning rate should be 3-10x smaller than AdamW's (and lambda 3-10x larger,
the effective decay is eta * lambda).

Choices:
- ``sign(0) = 0`` (an exact-zero interpolation gives no update, as in torch).
- The interpolation is computed with ``lerp`` (``m + (1-beta1)(g - m)``), the same rounding in
  the per-tensor and the ``torch._foreach_*`` path.

Paths: ``foreach`` (default) and a per-tensor loop run eagerly; ``fused=True`` runs
:func:`lion_fused` compiled (:mod:`lab.optim._fused`). A NaN/Inf gradient raises before the
step (``check_finite=False`` to opt out): otherwise ``sign(NaN) = 0`` would hide it and the NaN
would stay in m for ever.

State (per parameter): ``step``, ``exp_avg`` (m, 1 x p).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from lab.checks import check_betas, check_nonneg, check_positive
from lab.optim import _fused
from lab.optim._common import (by_device_dtype, decoupled_weight_decay, evaluate, keep_path_options,
                               path_options, prepare, zeros)
from lab.registry import register


def lion(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *, lr: float,
         beta1: float, beta2: float, weight_decay: float, foreach: bool) -> None:
    """Functional Lion step on lists of tensors (in place on ``params`` and ``exp_avgs``)."""
    decoupled_weight_decay(params, lr, weight_decay, foreach)
    if foreach:
        for p, g, m in by_device_dtype(params, grads, exp_avgs):
            # c = beta1 m + (1 - beta1) g;  theta <- theta - eta sign(c)
            c = torch._foreach_lerp(m, g, 1 - beta1)
            torch._foreach_sign_(c)
            torch._foreach_add_(p, c, alpha=-lr)
            # m <- beta2 m + (1 - beta2) g
            torch._foreach_lerp_(m, g, 1 - beta2)
        return
    for p, g, m in zip(params, grads, exp_avgs):
        c = torch.lerp(m, g, 1 - beta1)
        p.add_(c.sign_(), alpha=-lr)
        m.lerp_(g, 1 - beta2)


def lion_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
               steps: list[Tensor], *, lr: Tensor, beta1: Tensor, beta2: Tensor,
               weight_decay: Tensor, maximize: bool) -> None:
    """:func:`lion` for ``torch.compile`` (hyperparameters as 0-d tensors, steps advanced here)."""
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    torch._foreach_mul_(params, 1 - lr * weight_decay)           # theta (1 - eta lambda)
    c = _fused.lerp(exp_avgs, grads, 1 - beta1)                 # c = beta1 m + (1 - beta1) g
    torch._foreach_sign_(c)
    torch._foreach_add_(params, torch._foreach_mul(c, -lr))      # theta - eta sign(c)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)             # m <- beta2 m + (1 - beta2) g


@register("optimizer", "lion", paper="Symbolic Discovery of Optimization Algorithms",
          arxiv="2302.06675")
class Lion(torch.optim.Optimizer):
    """Lion: sign of an interpolation of momentum and gradient, decoupled weight decay.

    Args:
        params: parameters or parameter groups.
        lr (eta): learning rate, default 1e-4 (3-10x smaller than AdamW's).
        betas (beta1, beta2): interpolation and momentum coefficients, default (0.9, 0.99).
        weight_decay (lambda): decoupled weight decay, default 0.
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path (None = yes).
        fused: run the whole update as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, check_finite: bool = True):
        check_positive("lr", lr)
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize,
                        **path_options("Lion", foreach=foreach, fused=fused,
                                       check_finite=check_finite))
        super().__init__(params, defaults)
        keep_path_options(self)

    @torch.no_grad()
    def step(self, closure=None):
        """One Lion step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            prepared = prepare(self, group, lambda p: {"exp_avg": zeros(p)})
            if prepared is None:
                continue
            params, grads, states, _, foreach, fused = prepared
            beta1, beta2 = group["betas"]
            if fused:
                _fused.run(self, index, lion_fused, (params, grads, [s["exp_avg"] for s in states]),
                           states, dict(lr=group["lr"], beta1=beta1, beta2=beta2,
                                        weight_decay=group["weight_decay"]),
                           maximize=group["maximize"])
                continue
            lion(params, grads, [s["exp_avg"] for s in states], lr=group["lr"], beta1=beta1,
                 beta2=beta2, weight_decay=group["weight_decay"], foreach=foreach)
        return loss


__all__ = ["Lion", "lion", "lion_fused"]
