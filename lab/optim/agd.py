"""AGD: an auto-switching optimizer preconditioned by the stepwise gradient difference.

Paper: "AGD: an Auto-switchable Optimizer using Stepwise Gradient Difference as Preconditioning
Matrix", Yue et al., arXiv 2312.01658 (NeurIPS 2023). Equations and defaults follow the authors'
code (atorch ``optimizers/agd.py``). Not "Automatic Gradient Descent", a different method.

Per step t (learning rate eta, betas beta1, beta2, threshold delta, weight decay lambda)::

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

Departure from Adam: b tracks s^2 (change of the momentum) instead of g^2, and delta floors the
denominator instead of being added to it.

Choices and warnings: ``delta`` defaults to the code's 1e-5; the authors' README recommends
1e-14 for Transformer-like models, contradicting the code default, so pass delta explicitly.
delta must be > 0 (delta = 0 turns a zero gradient into 0/0). Under a *constant* gradient s_t = 0
after t = 1, so b_hat ~ 1/t shrinks and the step grows ~ sqrt(t) until sqrt(b_hat) < delta, when it
jumps to ``eta m_hat/delta`` (huge for tiny delta): use ``clip`` (e.g. 5) if training is
unstable. The code's ``win`` variant is not implemented. With weight_decouple=False the L2 term is
added to a new gradient tensor; ``p.grad`` is not modified (the reference modifies it).

State (per parameter): ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (b), ``max_exp_avg_sq`` with
amsgrad. Implementation note: s_t is formed before the momentum update as
``(beta1/(1 - beta1^t) - 1/(1 - beta1^{t-1})) m_{t-1} + (1 - beta1)/(1 - beta1^t) g_t``, the same
quantity without a copy of m_{t-1} (one scratch tensor instead of two).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

from lab.checks import check_betas, check_nonneg, check_positive
from lab.optim._common import (bias_correction, by_step, coupled_weight_decay,
                               decoupled_weight_decay, evaluate, prepare, zeros)
from lab.registry import register


def agd(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor] | None, steps: list[float], *, lr: float, beta1: float,
        beta2: float, delta: float, clip: float | None, foreach: bool) -> None:
    """Functional AGD step (weight decay already applied); in place on params and state."""
    lists = (params, grads, exp_avgs, exp_avg_sqs) + ((max_exp_avg_sqs,) if max_exp_avg_sqs else ())
    for t, bucket in by_step(steps, *lists):
        p, g, m, b = bucket[:4]
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
            if max_exp_avg_sqs:
                torch._foreach_maximum_(bucket[4], b)
                b = bucket[4]
            denom = torch._foreach_sqrt(b)                    # D = max(sqrt(b), delta sqrt(bc2))
            torch._foreach_clamp_min_(denom, floor)
            if clip is None:
                torch._foreach_addcdiv_(p, m, denom, value=-step_size)
                continue
            u = torch._foreach_div(m, denom)                  # u = clamp(m/D, -clip, clip)
            torch._foreach_clamp_min_(u, -clip)
            torch._foreach_clamp_max_(u, clip)
            torch._foreach_add_(p, u, alpha=-step_size)
            continue
        for i, (pi, gi, mi, bi) in enumerate(zip(p, g, m, b)):
            s = mi.mul(a).add_(gi, alpha=c) if t > 1 else gi
            mi.lerp_(gi, 1 - beta1)
            bi.mul_(beta2).addcmul_(s, s, value=1 - beta2)
            if max_exp_avg_sqs:
                bi = torch.maximum(bucket[4][i], bi, out=bucket[4][i])
            denom = bi.sqrt().clamp_min_(floor)
            if clip is None:
                pi.addcdiv_(mi, denom, value=-step_size)
            else:
                pi.add_((mi / denom).clamp_min_(-clip).clamp_max_(clip), alpha=-step_size)


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
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path (None = yes).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 delta: float = 1e-5, weight_decay: float = 0.0, amsgrad: bool = False,
                 weight_decouple: bool = True, fixed_decay: bool = False, clip: float | None = None,
                 *, maximize: bool = False, foreach: bool | None = None):
        check_positive("lr", lr)
        check_betas(betas)
        check_positive("delta", delta)
        check_nonneg("weight_decay", weight_decay)
        if clip is not None:
            check_positive("clip", clip)
        defaults = dict(lr=lr, betas=tuple(betas), delta=delta, weight_decay=weight_decay,
                        amsgrad=amsgrad, weight_decouple=weight_decouple, fixed_decay=fixed_decay,
                        clip=clip, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One AGD step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for group in self.param_groups:
            amsgrad = group["amsgrad"]

            def init(p: Tensor) -> dict[str, Tensor]:
                state = {"exp_avg": zeros(p), "exp_avg_sq": zeros(p)}
                if amsgrad:
                    state["max_exp_avg_sq"] = zeros(p)
                return state

            prepared = prepare(self, group, init)
            if prepared is None:
                continue
            params, grads, states, steps, foreach = prepared
            lr, wd = group["lr"], group["weight_decay"]
            if group["weight_decouple"]:
                decoupled_weight_decay(params, 1.0 if group["fixed_decay"] else lr, wd, foreach)
            else:
                grads = coupled_weight_decay(grads, params, wd, foreach)
            beta1, beta2 = group["betas"]
            agd(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [s["max_exp_avg_sq"] for s in states] if amsgrad else None, steps, lr=lr,
                beta1=beta1, beta2=beta2, delta=group["delta"], clip=group["clip"], foreach=foreach)
        return loss


__all__ = ["AGD", "agd", "sgd_fraction"]
