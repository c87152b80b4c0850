"""AGD: an auto-switching optimizer preconditioned by the stepwise gradient difference.

Paper: "AGD: an Auto-switchable Optimizer using Stepwise Gradient Difference as Preconditioning
Matrix", Yue et al., arXiv 2312.01658 (NeurIPS 2023). Equations and defaults follow the authors'
code (atorch ``optimizers/agd.py``). Not "Automatic Gradient Descent", a different method.

The update: per step t (learning rate eta, betas beta1, beta2, threshold delta, weight decay
lambda, gradient g_t, momentum m, preconditioner b, clip bound ``clip``, m_0 = b_0 = 0)::

    theta <- theta (1 - eta lambda)                    weight_decouple (default); fixed_decay: (1 - lambda)
       or  g <- g + lambda theta                        weight_decouple=False (L2)
    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    s_t = m_t/(1 - beta1^t) - m_{t-1}/(1 - beta1^{t-1})   difference of bias-corrected momenta; s_1 = g_1
    b_t = beta2 b_{t-1} + (1 - beta2) s_t^2              (amsgrad: running max of b_t)
    D   = max(sqrt(b_t), delta sqrt(1 - beta2^t))
    u   = m_t / D                                        (clipped to [-clip, clip] if clip is set)
    theta <- theta - eta sqrt(1 - beta2^t)/(1 - beta1^t) u

Equivalently ``theta <- theta - eta m_hat / max(sqrt(b_hat), delta)`` with hats the bias-corrected
moments. s_t approximates (Hessian x step): the preconditioner follows curvature along the path.
The *auto-switch*: where ``sqrt(b_hat) <= delta`` the coordinate takes an SGD-with-momentum step
``(eta/delta) m_hat``; elsewhere an adaptive step. Larger delta -> more coordinates in SGD mode
(:func:`sgd_fraction` measures the fraction).

Where it departs from Adam: b tracks s^2 (change of the momentum) instead of g^2, and delta floors
the denominator instead of being added to it.

Choices:
- ``delta`` defaults to the code's 1e-5; the authors' README recommends 1e-14 for
  Transformer-like models, contradicting the code default, so pass delta explicitly.
- delta must be > 0 (delta = 0 turns a zero gradient into 0/0): ``ValueError``.
- s_1 = g_1 (there is no m_0 difference to take at the first step), as the authors' code.
- With weight_decouple=False the L2 term is added to a new gradient tensor; ``p.grad`` is not
  modified (the reference modifies it).
- ``win=True`` requires ``weight_decouple=True`` and ``fixed_decay=False`` (``ValueError``).

Warning: under a *constant* gradient s_t = 0 after t = 1, so b_hat ~ 1/t shrinks and the step
grows ~ sqrt(t) until sqrt(b_hat) < delta, when it jumps to ``eta m_hat/delta`` (huge for tiny
delta): use ``clip`` (e.g. 5) if training is unstable.

``win=True``: the authors' code also offers Win acceleration ("Win: Weight-Decay-Integrated Nesterov
Acceleration for Adaptive Gradient Algorithms", Zhou, Xie and Yan, ICLR 2023, OpenReview
CPdc77SQfQ5). With eta' = eta sqrt(1 - beta2^t)/(1 - beta1^t) and u = m_t/D as above, a second
sequence z (started at theta_0) takes the conservative proximal step and theta combines it with a
reckless double step::

    z     <- (z - eta' u) / (1 + lambda eta')
    tau   =  1 / (3 + 2 eta' lambda)
    theta <- tau (theta - 2 eta' u) + 2 tau z

Weight decay lives inside these two updates (there is no separate decay step), so ``win`` needs
``weight_decouple=True`` and ``fixed_decay=False``. It keeps one more state tensor, ``z``.

State (per parameter): ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (b), ``max_exp_avg_sq`` with
amsgrad, ``z`` with win. Implementation note: s_t is formed before the momentum update as
``(beta1/(1 - beta1^t) - 1/(1 - beta1^{t-1})) m_{t-1} + (1 - beta1)/(1 - beta1^t) g_t``, the same
quantity without a copy of m_{t-1} (one scratch tensor instead of two).

Paths: eager foreach (default) or per-tensor loop; ``fused=True`` runs :func:`agd_fused` compiled
(:mod:`lab.optim._fused`; ``t > 1`` becomes a ``torch.where`` on the step tensor). A NaN/Inf
gradient raises before the step (``check_finite=False`` to opt out).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

from lab.checks import check_betas, check_nonneg, check_positive
from lab.optim import _fused
from lab.optim._common import (bias_correction, by_step, coupled_weight_decay,
                               decoupled_weight_decay, evaluate, keep_path_options, path_options,
                               prepare, zeros)
from lab.registry import register


def agd(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor] | None, steps: list[float], *, lr: float, beta1: float,
        beta2: float, delta: float, clip: float | None, foreach: bool, zs: list[Tensor] | None = None,
        weight_decay: float = 0.0) -> None:
    """Functional AGD step; in place on params and state.

    Without ``zs`` weight decay has already been applied by the caller; with ``zs`` (the Win
    sequence) ``weight_decay`` enters the Win updates instead.
    """
    absent = [None] * len(params)
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs or absent, zs or absent)
    for t, bucket in by_step(steps, *lists):
        p, g, m, b, b_max, z = bucket
        b_max = b_max if max_exp_avg_sqs else None
        z = z if zs else None
        bc1, bc2 = bias_correction(beta1, t), bias_correction(beta2, t)
        floor = delta * math.sqrt(bc2)                       # delta sqrt(1 - beta2^t)
        step_size = lr * math.sqrt(bc2) / bc1
        # s_t = m_t/bc1_t - m_{t-1}/bc1_{t-1} = a m_{t-1} + c g_t   (s_1 = g_1)
        a = beta1 / bc1 - 1.0 / bias_correction(beta1, t - 1) if t > 1 else 0.0
        c = (1 - beta1) / bc1
        if foreach:
            if t > 1:
                s = torch._foreach_mul(m, a)
                torch._foreach_add_(s, g, alpha=c)
            else:
                s = g
            torch._foreach_lerp_(m, g, 1 - beta1)             # m_t
            torch._foreach_mul_(b, beta2)                     # b_t = beta2 b + (1-beta2) s^2
            torch._foreach_addcmul_(b, s, s, value=1 - beta2)
            if b_max is not None:
                torch._foreach_maximum_(b_max, b)
                b = b_max
            denom = torch._foreach_sqrt(b)                    # D = max(sqrt(b), delta sqrt(bc2))
            torch._foreach_clamp_min_(denom, floor)
            if clip is None and z is None:
                torch._foreach_addcdiv_(p, m, denom, value=-step_size)
                continue
            u = torch._foreach_div(m, denom)                  # u = clamp(m/D, -clip, clip)
            if clip is not None:
                torch._foreach_clamp_min_(u, -clip)
                torch._foreach_clamp_max_(u, clip)
            if z is None:
                torch._foreach_add_(p, u, alpha=-step_size)
                continue
            tau = 1.0 / (3.0 + 2.0 * step_size * weight_decay)
            torch._foreach_add_(z, u, alpha=-step_size)       # z <- (z - eta' u)/(1 + lambda eta')
            torch._foreach_mul_(z, 1.0 / (1.0 + weight_decay * step_size))
            torch._foreach_mul_(p, tau)                       # theta <- tau(theta - 2 eta' u) + 2 tau z
            torch._foreach_add_(p, u, alpha=-2.0 * tau * step_size)
            torch._foreach_add_(p, z, alpha=2.0 * tau)
            continue
        for i, (pi, gi, mi, bi) in enumerate(zip(p, g, m, b)):
            s = mi.mul(a).add_(gi, alpha=c) if t > 1 else gi
            mi.lerp_(gi, 1 - beta1)
            bi.mul_(beta2).addcmul_(s, s, value=1 - beta2)
            if b_max is not None:
                bi = torch.maximum(b_max[i], bi, out=b_max[i])
            denom = bi.sqrt().clamp_min_(floor)
            if clip is None and z is None:
                pi.addcdiv_(mi, denom, value=-step_size)
                continue
            u = mi / denom
            if clip is not None:
                u.clamp_min_(-clip).clamp_max_(clip)
            if z is None:
                pi.add_(u, alpha=-step_size)
                continue
            tau = 1.0 / (3.0 + 2.0 * step_size * weight_decay)
            z[i].add_(u, alpha=-step_size).mul_(1.0 / (1.0 + weight_decay * step_size))
            pi.mul_(tau).add_(u, alpha=-2.0 * tau * step_size).add_(z[i], alpha=2.0 * tau)


def agd_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
              exp_avg_sqs: list[Tensor], max_exp_avg_sqs: list[Tensor] | None,
              zs: list[Tensor] | None, steps: list[Tensor], *, lr: Tensor, beta1: Tensor,
              beta2: Tensor, delta: Tensor, weight_decay: Tensor, clip: Tensor,
              weight_decouple: bool, fixed_decay: bool, clipped: bool, maximize: bool) -> None:
    """:func:`agd` (with its weight decay) for ``torch.compile`` (hyperparameters as 0-d tensors;
    ``clip`` is read only when ``clipped``; ``zs`` given = Win)."""
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    if zs is None and weight_decouple:                               # theta (1 - eta lambda)
        torch._foreach_mul_(params, 1 - (1.0 if fixed_decay else lr) * weight_decay)
    elif zs is None:                                                 # g + lambda theta
        grads = torch._foreach_add(grads, torch._foreach_mul(params, weight_decay))
    t = [step.to(torch.float64) for step in steps]
    bc1, bc2 = [1 - beta1 ** ti for ti in t], [1 - beta2 ** ti for ti in t]
    # s_t = a m_{t-1} + c g_t, a = beta1/bc1_t - 1/bc1_{t-1} (0 at t = 1, where s_1 = g_1)
    a_t = _fused.per_tensor([torch.where(ti > 1, beta1 / b1 - 1 / (1 - beta1 ** (ti - 1)), 0.0)
                             for ti, b1 in zip(t, bc1)])
    c_t = _fused.per_tensor([(1 - beta1) / b1 for b1 in bc1])
    floors = _fused.per_tensor([delta * b2.sqrt() for b2 in bc2])
    step_sizes = _fused.per_tensor([lr * b2.sqrt() / b1 for b1, b2 in zip(bc1, bc2)])
    for i, (p, g, m, b) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        s = a_t[i] * m + c_t[i] * g
        m.lerp_(g, 1 - beta1)                                        # m_t
        b.mul_(beta2).add_((1 - beta2) * s * s)                      # b_t = beta2 b + (1-beta2) s^2
        if max_exp_avg_sqs is not None:
            b = torch.maximum(max_exp_avg_sqs[i], b, out=max_exp_avg_sqs[i])
        step_size = step_sizes[i]
        u = m / b.sqrt().clamp_min(floors[i])                        # u = m / max(sqrt(b), delta sqrt(bc2))
        if clipped:
            u = u.clamp(-clip, clip)
        if zs is None:
            p.sub_(step_size * u)
            continue
        tau = 1 / (3 + 2 * step_size * weight_decay)                 # Win
        zs[i].sub_(step_size * u).mul_(1 / (1 + weight_decay * step_size))
        p.copy_(tau * (p - 2 * step_size * u) + 2 * tau * zs[i])


def sgd_fraction(optimizer: torch.optim.Optimizer) -> float:
    """Fraction of coordinates whose last AGD step was SGD-like: ``sqrt(b_hat) <= delta``."""
    sgd, total = 0, 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state or "exp_avg_sq" not in state:
                continue
            b = state.get("max_exp_avg_sq", state["exp_avg_sq"])
            t = state["step"].item()
            floor = group["delta"] * math.sqrt(bias_correction(group["betas"][1], t))
            sgd += int((b.sqrt() <= floor).sum())
            total += b.numel()
    return sgd / total if total else float("nan")


@register("optimizer", "agd",
          paper="AGD: an Auto-switchable Optimizer using Stepwise Gradient Difference as "
                "Preconditioning Matrix", arxiv="2312.01658")
class AGD(torch.optim.Optimizer):
    """AGD: Adam-like steps preconditioned by the momentum difference, SGD below delta.

    Args:
        params: parameters or parameter groups.
        lr (eta): learning rate, default 1e-3 (about 1/10 of AdamW's is recommended).
        betas (beta1, beta2): EMA coefficients, default (0.9, 0.999).
        delta: auto-switch threshold on sqrt(b_hat), > 0; default 1e-5 (code), 1e-14 is the
            README's advice for Transformers. Pass it explicitly.
        weight_decay (lambda): default 0.
        amsgrad: use the running max of b.
        weight_decouple: decoupled decay (True) or L2 in the gradient.
        fixed_decay: with weight_decouple, decay by (1 - lambda), not scaled by eta.
        clip: clamp each coordinate of u = m/D to [-clip, clip]; None = no clipping.
        win: Win acceleration (the authors' code option; see the module docstring).
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path (None = yes).
        fused: run the whole update as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 delta: float = 1e-5, weight_decay: float = 0.0, amsgrad: bool = False,
                 weight_decouple: bool = True, fixed_decay: bool = False, clip: float | None = None,
                 win: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, check_finite: bool = True):
        check_positive("lr", lr)
        check_betas(betas)
        check_positive("delta", delta)
        check_nonneg("weight_decay", weight_decay)
        if clip is not None:
            check_positive("clip", clip)
        if win and (not weight_decouple or fixed_decay):
            raise ValueError("win integrates decoupled weight decay into its updates: it needs "
                             f"weight_decouple=True and fixed_decay=False, got {weight_decouple} and {fixed_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), delta=delta, weight_decay=weight_decay,
                        amsgrad=amsgrad, weight_decouple=weight_decouple, fixed_decay=fixed_decay,
                        clip=clip, win=win, maximize=maximize,
                        **path_options("AGD", foreach=foreach, fused=fused, check_finite=check_finite))
        super().__init__(params, defaults)
        keep_path_options(self)

    @torch.no_grad()
    def step(self, closure=None):
        """One AGD step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            amsgrad, win = group["amsgrad"], group.get("win", False)

            def init(p: Tensor) -> dict[str, Tensor]:
                state = {"exp_avg": zeros(p), "exp_avg_sq": zeros(p)}
                if amsgrad:
                    state["max_exp_avg_sq"] = zeros(p)
                if win:
                    state["z"] = p.detach().clone(memory_format=torch.preserve_format)   # z_0 = theta_0
                return state

            prepared = prepare(self, group, init)
            if prepared is None:
                continue
            params, grads, states, steps, foreach, fused = prepared
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            if fused:
                clip = group["clip"]
                _fused.run(self, index, agd_fused,
                           (params, grads, [s["exp_avg"] for s in states],
                            [s["exp_avg_sq"] for s in states],
                            [s["max_exp_avg_sq"] for s in states] if amsgrad else None,
                            [s["z"] for s in states] if win else None), states,
                           dict(lr=lr, beta1=beta1, beta2=beta2, delta=group["delta"],
                                weight_decay=wd, clip=0.0 if clip is None else clip),
                           weight_decouple=group["weight_decouple"],
                           fixed_decay=group["fixed_decay"], clipped=clip is not None,
                           maximize=group["maximize"])
                continue
            if win:
                pass                                          # the Win updates carry the decay
            elif group["weight_decouple"]:
                decoupled_weight_decay(params, 1.0 if group["fixed_decay"] else lr, wd, foreach)
            else:
                grads = coupled_weight_decay(grads, params, wd, foreach)
            agd(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [s["max_exp_avg_sq"] for s in states] if amsgrad else None, steps, lr=lr,
                beta1=beta1, beta2=beta2, delta=group["delta"], clip=group["clip"], foreach=foreach,
                zs=[s["z"] for s in states] if win else None, weight_decay=wd)
        return loss


__all__ = ["AGD", "agd", "agd_fused", "sgd_fraction"]
