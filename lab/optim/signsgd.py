"""signSGD and Signum: step along the sign of the gradient (or of its momentum).

Paper: "signSGD: Compressed Optimisation for Non-Convex Problems", Bernstein et al. (with Wang,
Azizzadenesheli, Anandkumar), arXiv 1802.04434. The catalog lists it as the state-free baseline
of "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training"
(arXiv 2411.07837), which uses signSGD for the state-free part of the gradient.

The update: per step, learning rate eta, momentum beta, decoupled weight decay lambda, gradient g_t,
momentum buffer m::

    theta <- theta (1 - eta lambda)
    signSGD  (beta = 0):  theta <- theta - eta sign(g_t)                          no state
    Signum   (beta > 0):  m <- beta m + (1 - beta) g_t;  theta <- theta - eta sign(m)   m_0 = 0

Intuition: one bit per coordinate carries the direction; the step length is eta for every
coordinate that has a non-zero gradient, whatever the gradient's scale.

Where it departs from SGD (with momentum): only the sign; it is the state-free baseline of FRUGAL
and the parent of Lion (relative to Lion, Signum uses one beta for the update and the state).

Choices:
- ``sign(0) = 0`` (no random tie-breaking).
- The default is the state-free signSGD (``momentum=0``); Signum is ``momentum=0.9``
  (``"signsgd(momentum=0.9)"``).
- Weight decay is decoupled (multiplies theta, like the peer ``pytorch_optimizer.SignSGD``), so it
  is not fed through the sign.

Paths: ``foreach`` (default) and a per-tensor loop run eagerly; ``fused=True`` runs
:func:`signsgd_fused` compiled (:mod:`lab.optim._fused`). A NaN/Inf gradient raises before the
step (``check_finite=False`` to opt out): ``sign(NaN) = 0`` would otherwise hide it.

State (per parameter): ``step``; ``momentum_buffer`` (m, 1 x p) only when ``momentum > 0``.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from lab.checks import check_nonneg, check_positive, check_range
from lab.optim import _fused
from lab.optim._common import (by_device_dtype, decoupled_weight_decay, evaluate, keep_path_options,
                               path_options, prepare, zeros)
from lab.registry import register


def signsgd(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor] | None, *,
            lr: float, momentum: float, weight_decay: float, foreach: bool) -> None:
    """Functional signSGD / Signum step (in place on ``params`` and ``momentum_buffers``)."""
    decoupled_weight_decay(params, lr, weight_decay, foreach)
    if foreach:
        if momentum_buffers is None:
            for p, g in by_device_dtype(params, grads):
                torch._foreach_add_(p, torch._foreach_sign(g), alpha=-lr)  # theta -= eta sign(g)
            return
        for p, g, m in by_device_dtype(params, grads, momentum_buffers):
            torch._foreach_lerp_(m, g, 1 - momentum)                      # m <- beta m + (1-beta) g
            torch._foreach_add_(p, torch._foreach_sign(m), alpha=-lr)     # theta -= eta sign(m)
        return
    for i, (p, g) in enumerate(zip(params, grads)):
        if momentum_buffers is not None:
            g = momentum_buffers[i].lerp_(g, 1 - momentum)
        p.add_(g.sign(), alpha=-lr)


def signsgd_fused(params: list[Tensor], grads: list[Tensor],
                  momentum_buffers: list[Tensor] | None, steps: list[Tensor], *, lr: Tensor,
                  momentum: Tensor, weight_decay: Tensor, maximize: bool) -> None:
    """:func:`signsgd` for ``torch.compile`` (hyperparameters as 0-d tensors, steps advanced here)."""
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    torch._foreach_mul_(params, 1 - lr * weight_decay)               # theta (1 - eta lambda)
    if momentum_buffers is not None:
        torch._foreach_lerp_(momentum_buffers, grads, 1 - momentum)  # m <- beta m + (1-beta) g
        grads = momentum_buffers
    torch._foreach_add_(params, torch._foreach_mul(torch._foreach_sign(grads), -lr))


@register("optimizer", "signsgd",
          paper="FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
          arxiv="2411.07837",
          summary="signSGD (Bernstein et al., arXiv 1802.04434; state-free) and Signum (momentum > 0)")
class SignSGD(torch.optim.Optimizer):
    """signSGD (``momentum=0``) and Signum (``momentum>0``), decoupled weight decay.

    Args:
        params: parameters or parameter groups.
        lr (eta): learning rate, default 1e-3.
        momentum (beta): EMA coefficient of Signum in [0, 1); 0 (default) = signSGD, no state.
        weight_decay (lambda): decoupled weight decay, default 0.
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path (None = yes).
        fused: run the whole update as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, check_finite: bool = True):
        check_positive("lr", lr)
        check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
        check_nonneg("weight_decay", weight_decay)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize,
                        **path_options("SignSGD", foreach=foreach, fused=fused,
                                       check_finite=check_finite))
        super().__init__(params, defaults)
        keep_path_options(self)

    @torch.no_grad()
    def step(self, closure=None):
        """One signSGD / Signum step; ``closure`` (optional) re-evaluates the loss."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            momentum = group["momentum"]
            init = (lambda p: {"momentum_buffer": zeros(p)}) if momentum > 0 else None
            prepared = prepare(self, group, init)
            if prepared is None:
                continue
            params, grads, states, _, foreach, fused = prepared
            buffers = None
            if momentum > 0:
                # a group switched to momentum after some steps gets its buffer now
                buffers = [s.setdefault("momentum_buffer", zeros(p)) for s, p in zip(states, params)]
            if fused:
                _fused.run(self, index, signsgd_fused, (params, grads, buffers), states,
                           dict(lr=group["lr"], momentum=momentum,
                                weight_decay=group["weight_decay"]),
                           maximize=group["maximize"])
                continue
            signsgd(params, grads, buffers, lr=group["lr"], momentum=momentum,
                    weight_decay=group["weight_decay"], foreach=foreach)
        return loss


__all__ = ["SignSGD", "signsgd", "signsgd_fused"]
