"""AdaBelief: Adam whose second moment measures the *surprise* of the gradient.

Paper: "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients", Zhuang et al.,
arXiv 2010.07468 (NeurIPS 2020). Defaults and step order follow the authors' package
``adabelief-pytorch`` 0.2.1.

The update: per step t (learning rate eta, betas beta1, beta2, eps, weight decay lambda,
gradient g, parameter theta, first moment m, belief s, m_0 = s_0 = 0)::

    theta <- theta (1 - eta lambda)                      weight_decouple (default); fixed_decay: (1 - lambda)
       or  g <- g + lambda theta                          weight_decouple=False (L2)
    m <- beta1 m + (1 - beta1) g                          as Adam
    s <- beta2 s + (1 - beta2) (g - m)^2 + eps            the "belief": EMA of (g - m)^2, m the NEW m
    rectify=False:  theta <- theta - eta/(1 - beta1^t) * m / (sqrt(s)/sqrt(1 - beta2^t) + eps)
    rectify=True (RAdam-style, package default):
        rho_inf = 2/(1 - beta2) - 1,  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
        rho_t >= 5:  r_t = sqrt((1 - beta2^t)(rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                     theta <- theta - eta r_t/(1 - beta1^t) * m / (sqrt(s) + eps)
        rho_t <  5:  theta <- theta - eta m/(1 - beta1^t)  if degenerated_to_sgd, else no step

(rho_t = length of the approximated simple moving average, r_t = RAdam's variance rectification.)
Intuition: Adam divides by the size of the gradient; AdaBelief divides by how far the gradient
is from its prediction m. A consistent gradient (small g - m) gives a small s and a large step;
a noisy one (large g - m) a small step.

Where it departs from Adam: only the second moment (and eps is added inside s every step, so s >=
eps/(1 - beta2) and AdaBelief's eps=1e-16 plays the role of Adam's eps=1e-8). With beta2 = 0.999,
rectify=True makes the first 5 steps SGD-with-momentum steps (rho_t < 5 for t <= 5).

Choices:
- The three published peers disagree on defaults (see the spec); this follows the authors'
  package 0.2.1: eps 1e-16, weight_decouple True, rectify True, degenerated_to_sgd True.
- The rectified step size is recomputed each step (the package caches it; same numbers).
- With weight_decouple=False the L2 term is added to a new gradient tensor; ``p.grad`` is left
  untouched.

State (per parameter): ``step``, ``exp_avg`` (m), ``exp_avg_var`` (s), and ``max_exp_avg_var``
with amsgrad (the running max of s, used in the denominator).

Paths: eager foreach (default) or per-tensor loop; ``fused=True`` runs :func:`adabelief_fused`
compiled (:mod:`lab.optim._fused`; the rectification branch becomes a ``torch.where`` on the step
tensor). A NaN/Inf gradient raises before the step (``check_finite=False`` to opt out).
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


def rectification(beta2: float, step: float) -> float | None:
    """RAdam's variance rectification r_t, or None while rho_t < 5 (variance not yet tractable)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / (1.0 - beta2 ** step)
    if rho_t < 5.0:
        return None
    return math.sqrt((1.0 - beta2 ** step) * (rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                     / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))


def adabelief(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
              exp_avg_vars: list[Tensor], max_exp_avg_vars: list[Tensor] | None, steps: list[float],
              *, lr: float, beta1: float, beta2: float, eps: float, rectify: bool,
              degenerated_to_sgd: bool, foreach: bool) -> None:
    """Functional AdaBelief step (weight decay already applied); in place on params and state."""
    lists = (params, grads, exp_avgs, exp_avg_vars) + ((max_exp_avg_vars,) if max_exp_avg_vars else ())
    for t, bucket in by_step(steps, *lists):
        p, g, m, s = bucket[:4]
        bc1, bc2 = bias_correction(beta1, t), bias_correction(beta2, t)
        r_t = rectification(beta2, t) if rectify else None
        scale = 1.0 if rectify else math.sqrt(bc2)
        step_size = lr * ((r_t or 0.0) if rectify else scale) / bc1
        if foreach:
            torch._foreach_lerp_(m, g, 1 - beta1)                # m <- beta1 m + (1-beta1) g
            diff = torch._foreach_sub(g, m)                      # g - m
            torch._foreach_mul_(s, beta2)                        # s <- beta2 s + (1-beta2)(g-m)^2 + eps
            torch._foreach_addcmul_(s, diff, diff, value=1 - beta2)
            torch._foreach_add_(s, eps)
            if max_exp_avg_vars:
                torch._foreach_maximum_(bucket[4], s)            # s_max <- max(s_max, s)
                s = bucket[4]
            if rectify and r_t is None:
                if degenerated_to_sgd:
                    torch._foreach_add_(p, m, alpha=-lr / bc1)   # SGD-with-momentum step
                continue
            # m/(sqrt(s)/sqrt(bc2) + eps) = sqrt(bc2) m/(sqrt(s) + eps sqrt(bc2))
            denom = torch._foreach_sqrt(s)
            torch._foreach_add_(denom, eps * scale)
            torch._foreach_addcdiv_(p, m, denom, value=-step_size)
            continue
        for i, (pi, gi, mi, si) in enumerate(zip(p, g, m, s)):
            mi.lerp_(gi, 1 - beta1)
            diff = gi - mi
            si.mul_(beta2).addcmul_(diff, diff, value=1 - beta2).add_(eps)
            if max_exp_avg_vars:
                si = torch.maximum(bucket[4][i], si, out=bucket[4][i])
            if rectify and r_t is None:
                if degenerated_to_sgd:
                    pi.add_(mi, alpha=-lr / bc1)
                continue
            pi.addcdiv_(mi, si.sqrt().add_(eps * scale), value=-step_size)


def adabelief_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                    exp_avg_vars: list[Tensor], max_exp_avg_vars: list[Tensor] | None,
                    steps: list[Tensor], *, lr: Tensor, beta1: Tensor, beta2: Tensor, eps: Tensor,
                    weight_decay: Tensor, weight_decouple: bool, fixed_decay: bool, rectify: bool,
                    degenerated_to_sgd: bool, maximize: bool) -> None:
    """:func:`adabelief` (with its weight decay) for ``torch.compile``: hyperparameters are 0-d
    tensors, the step counts tensors advanced here, the rectification a ``torch.where``."""
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decouple:                                            # theta (1 - eta lambda)
        torch._foreach_mul_(params, 1 - (1.0 if fixed_decay else lr) * weight_decay)
    else:                                                          # g + lambda theta
        grads = torch._foreach_add(grads, torch._foreach_mul(params, weight_decay))
    t = [step.to(torch.float64) for step in steps]
    bc1 = [1 - beta1 ** ti for ti in t]
    bc2 = [1 - beta2 ** ti for ti in t]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)               # m <- beta1 m + (1-beta1) g
    diff = torch._foreach_sub(grads, exp_avgs)                     # s <- beta2 s + (1-beta2)(g-m)^2 + eps
    torch._foreach_mul_(exp_avg_vars, beta2)
    torch._foreach_add_(exp_avg_vars, torch._foreach_mul(torch._foreach_mul(diff, diff), 1 - beta2))
    torch._foreach_add_(exp_avg_vars, eps)
    s = exp_avg_vars
    if max_exp_avg_vars is not None:
        torch._foreach_maximum_(max_exp_avg_vars, s)               # s_max <- max(s_max, s)
        s = max_exp_avg_vars
    if not rectify:                                                # eta sqrt(bc2)/bc1 m/(sqrt(s) + eps sqrt(bc2))
        step_size = _fused.per_tensor([lr * b2.sqrt() / b1 for b1, b2 in zip(bc1, bc2)])
        eps_t = _fused.per_tensor([eps * b2.sqrt() for b2 in bc2])
        for p, m, si, c, e in zip(params, exp_avgs, s, step_size, eps_t):
            p.sub_(c * (m / (si.sqrt() + e)))
        return
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = [rho_inf - 2 * ti * beta2 ** ti / b2 for ti, b2 in zip(t, bc2)]
    r_t = [(b2 * (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)).clamp_min(0).sqrt()
           for rho, b2 in zip(rho_t, bc2)]
    tractable = [rho >= 5 for rho in rho_t]
    # rho_t >= 5: rectified step eta r_t/bc1 m/(sqrt(s) + eps); else an SGD step eta/bc1 m, or none
    adaptive = _fused.per_tensor([torch.where(ok, lr * r / b1, 0.0) for ok, r, b1 in zip(tractable, r_t, bc1)])
    early = _fused.per_tensor([torch.where(ok, 0.0, lr / b1 if degenerated_to_sgd else 0.0)
                               for ok, b1 in zip(tractable, bc1)])
    for p, m, si, a, e in zip(params, exp_avgs, s, adaptive, early):
        p.sub_(a * (m / (si.sqrt() + eps)) + e * m)


@register("optimizer", "adabelief",
          paper="AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
          arxiv="2010.07468")
class AdaBelief(torch.optim.Optimizer):
    """AdaBelief: Adam with s = EMA of (g - m)^2 (+ eps) in place of the EMA of g^2.

    Args:
        params: parameters or parameter groups.
        lr (eta): learning rate, default 1e-3.
        betas (beta1, beta2): EMA coefficients of m and s, default (0.9, 0.999).
        eps: added to s every step and to the denominator, default 1e-16 (1e-8 for CNNs).
        weight_decay (lambda): default 0.
        amsgrad: use the running max of s in the denominator.
        weight_decouple: decoupled decay theta (1 - eta lambda) (True) or L2 in the gradient.
        fixed_decay: with weight_decouple, decay by (1 - lambda), not scaled by eta.
        rectify: RAdam-style rectification of the early steps (package default True).
        degenerated_to_sgd: while rectification is undefined (rho_t < 5) take SGD-momentum steps.
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path (None = yes).
        fused: run the whole update as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0.0, amsgrad: bool = False,
                 weight_decouple: bool = True, fixed_decay: bool = False, rectify: bool = True,
                 degenerated_to_sgd: bool = True, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, check_finite: bool = True):
        check_positive("lr", lr)
        check_betas(betas)
        check_nonneg("eps", eps)
        check_nonneg("weight_decay", weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, weight_decouple=weight_decouple, fixed_decay=fixed_decay,
                        rectify=rectify, degenerated_to_sgd=degenerated_to_sgd, maximize=maximize,
                        **path_options("AdaBelief", foreach=foreach, fused=fused,
                                       check_finite=check_finite))
        super().__init__(params, defaults)
        keep_path_options(self)

    @torch.no_grad()
    def step(self, closure=None):
        """One AdaBelief step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            amsgrad = group["amsgrad"]

            def init(p: Tensor) -> dict[str, Tensor]:
                state = {"exp_avg": zeros(p), "exp_avg_var": zeros(p)}
                if amsgrad:
                    state["max_exp_avg_var"] = zeros(p)
                return state

            prepared = prepare(self, group, init)
            if prepared is None:
                continue
            params, grads, states, steps, foreach, fused = prepared
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            if fused:
                _fused.run(self, index, adabelief_fused,
                           (params, grads, [s["exp_avg"] for s in states],
                            [s["exp_avg_var"] for s in states],
                            [s["max_exp_avg_var"] for s in states] if amsgrad else None), states,
                           dict(lr=lr, beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=wd),
                           weight_decouple=group["weight_decouple"],
                           fixed_decay=group["fixed_decay"], rectify=group["rectify"],
                           degenerated_to_sgd=group["degenerated_to_sgd"],
                           maximize=group["maximize"])
                continue
            if group["weight_decouple"]:
                decoupled_weight_decay(params, 1.0 if group["fixed_decay"] else lr, wd, foreach)
            else:
                grads = coupled_weight_decay(grads, params, wd, foreach)
            adabelief(params, grads, [s["exp_avg"] for s in states],
                      [s["exp_avg_var"] for s in states],
                      [s["max_exp_avg_var"] for s in states] if amsgrad else None, steps,
                      lr=lr, beta1=beta1, beta2=beta2, eps=group["eps"], rectify=group["rectify"],
                      degenerated_to_sgd=group["degenerated_to_sgd"], foreach=foreach)
        return loss


__all__ = ["AdaBelief", "adabelief", "adabelief_fused", "rectification"]
