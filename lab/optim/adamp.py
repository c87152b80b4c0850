"""AdamP and SGDP: remove the radial part of the update on scale-invariant weights.

Paper: "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
Heo et al., arXiv 2006.08217 (ICLR 2021). Equations follow the authors' package ``adamp`` 0.3.0.

Why: a weight followed by a normalization layer (BatchNorm, LayerNorm) is scale-invariant,
L(c w) = L(w), so its gradient is orthogonal to w and only the *direction* w/||w|| matters; its
effective step is ~ eta/||w||^2. Momentum adds a radial component that makes ||w|| grow fast,
shrinking the effective step prematurely. AdamP/SGDP detect such weights and project the radial
component out of the update, so ||w|| grows far less.

Projection Pi(theta, g, u) -> (u', r) for a tensor with ``dim() > 1`` (delta, eps; r = weight-decay
ratio)::

    for view in (channel view: rows = theta.reshape(size(0), -1),  layer view: theta.reshape(1, -1)):
        c_i = |cos(g_i, theta_i)|                    per row i, on the RAW gradient g
        if max_i c_i < delta / sqrt(row length):     "g is orthogonal to theta": scale-invariant
            theta^_i = theta_i / (||theta_i|| + eps)
            u_i <- u_i - theta^_i <theta^_i, u_i>     remove the radial part
            return u, wd_ratio                        the first matching view wins
    return u, 1                                       (1-D tensors are never projected)

AdamP (Form A eps, decoupled decay with ratio r)::

    m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
    u  = m / (sqrt(v)/sqrt(1 - beta2^t) + eps)      (nesterov: (beta1 m + (1 - beta1) g) in place of m)
    (u, r) = Pi(theta, g, u);  theta <- theta (1 - eta lambda r);  theta <- theta - eta/(1 - beta1^t) u

SGDP (momentum buffer b starts at 0, unlike torch.optim.SGD)::

    b <- mu b + (1 - tau) g;  d = g + mu b (nesterov) or d = b
    (d, r) = Pi(theta, g, d);  theta <- theta (1 - eta lambda r / (1 - mu));  theta <- theta - eta d

Departures: AdamP with ``delta = 0`` never projects and is exactly torch.optim.AdamW; SGDP with
``delta = 0``, ``weight_decay = 0`` and ``dampening = 0`` is exactly torch.optim.SGD. Kept for
parity with the reference: the cosine test uses ``F.cosine_similarity`` on the raw gradient; a zero
gradient counts as scale-invariant (cos = 0); SGDP divides the decay by (1 - mu).
The moment updates run through ``torch._foreach_*``; the projection is a per-tensor loop (it
needs per-row reductions and a data-dependent branch).

State (per parameter): AdamP ``step``, ``exp_avg``, ``exp_avg_sq``; SGDP ``step``, ``momentum``.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from lab.checks import check_betas, check_nonneg, check_positive, check_range
from lab.optim._common import (advance_steps, bias_correction, by_step, evaluate, gather, negate,
                               use_foreach, zeros)
from lab.registry import register


def project_radial(param: Tensor, grad: Tensor, update: Tensor, *, delta: float, eps: float,
                   wd_ratio: float) -> tuple[Tensor, float]:
    """``Pi``: the update without its radial component, and the weight-decay ratio r."""
    if param.dim() <= 1:
        return update, 1.0
    for rows in (param.shape[0], 1):                       # channel view, then layer view
        p_view = param.reshape(rows, -1)                   # (rows, n)
        g_view = grad.reshape(rows, -1)
        cosine = F.cosine_similarity(g_view, p_view, dim=1, eps=eps).abs_()    # (rows,)
        if cosine.max() < delta / math.sqrt(p_view.shape[1]):
            p_hat = p_view / (p_view.norm(dim=1, keepdim=True) + eps)          # (rows, n)
            u_view = update.reshape(rows, -1)
            radial = (p_hat * u_view).sum(dim=1, keepdim=True)                 # (rows, 1)
            return (u_view - p_hat * radial).reshape(update.shape), wd_ratio
    return update, 1.0


def _project_all(params, grads, updates, delta, eps, wd_ratio):
    ratios = []
    for i, (p, g) in enumerate(zip(params, grads)):
        updates[i], r = project_radial(p, g, updates[i], delta=delta, eps=eps, wd_ratio=wd_ratio)
        ratios.append(r)
    return updates, ratios


def _scale(params: list[Tensor], factors: list[float], foreach: bool) -> None:
    """``theta_i <- theta_i * factor_i`` (weight decay with a per-tensor ratio)."""
    if foreach:
        torch._foreach_mul_(params, factors)
        return
    for p, f in zip(params, factors):
        p.mul_(f)


def adamp(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
          exp_avg_sqs: list[Tensor], steps: list[float], *, lr: float, beta1: float, beta2: float,
          eps: float, weight_decay: float, delta: float, wd_ratio: float, nesterov: bool,
          foreach: bool) -> None:
    """Functional AdamP step; in place on params and state."""
    for t, (p, g, m, v) in by_step(steps, params, grads, exp_avgs, exp_avg_sqs):
        bc1, bc2 = bias_correction(beta1, t), bias_correction(beta2, t)
        if foreach:
            torch._foreach_lerp_(m, g, 1 - beta1)                       # m, v as Adam
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, g, g, value=1 - beta2)
            denom = torch._foreach_sqrt(v)                              # sqrt(v_hat) + eps
            torch._foreach_div_(denom, math.sqrt(bc2))
            torch._foreach_add_(denom, eps)
            numer = torch._foreach_lerp(m, g, 1 - beta1) if nesterov else m
            u = list(torch._foreach_div(numer, denom))
        else:
            u = []
            for gi, mi, vi in zip(g, m, v):
                mi.lerp_(gi, 1 - beta1)
                vi.mul_(beta2).addcmul_(gi, gi, value=1 - beta2)
                denom = vi.sqrt().div_(math.sqrt(bc2)).add_(eps)
                u.append((torch.lerp(mi, gi, 1 - beta1) if nesterov else mi) / denom)
        u, ratios = _project_all(p, g, u, delta, eps, wd_ratio)
        if weight_decay > 0:                                            # theta (1 - eta lambda r)
            _scale(p, [1 - lr * weight_decay * r for r in ratios], foreach)
        if foreach:
            torch._foreach_add_(p, u, alpha=-lr / bc1)
        else:
            for pi, ui in zip(p, u):
                pi.add_(ui, alpha=-lr / bc1)


def sgdp(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], *, lr: float,
         momentum: float, dampening: float, weight_decay: float, delta: float, wd_ratio: float,
         eps: float, nesterov: bool, foreach: bool) -> None:
    """Functional SGDP step; in place on params and momentum buffers."""
    if foreach:
        torch._foreach_mul_(momentum_buffers, momentum)                 # b <- mu b + (1-tau) g
        torch._foreach_add_(momentum_buffers, grads, alpha=1 - dampening)
        d = list(torch._foreach_add(grads, momentum_buffers, alpha=momentum) if nesterov
                 else momentum_buffers)
    else:
        d = []
        for g, b in zip(grads, momentum_buffers):
            b.mul_(momentum).add_(g, alpha=1 - dampening)
            d.append(g.add(b, alpha=momentum) if nesterov else b)
    d, ratios = _project_all(params, grads, d, delta, eps, wd_ratio)
    if weight_decay > 0:                                                # theta (1 - eta lambda r/(1-mu))
        _scale(params, [1 - lr * weight_decay * r / (1 - momentum) for r in ratios], foreach)
    if foreach:
        torch._foreach_add_(params, d, alpha=-lr)
    else:
        for p, di in zip(params, d):
            p.add_(di, alpha=-lr)


def _check_projection(delta: float, wd_ratio: float, eps: float) -> None:
    check_nonneg("delta", delta)
    check_range("wd_ratio", wd_ratio, 0.0, 1.0)
    check_nonneg("eps", eps)


@register("optimizer", "adamp",
          paper="AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
          arxiv="2006.08217")
class AdamP(torch.optim.Optimizer):
    """AdamP: AdamW whose update loses its radial part on scale-invariant weights.

    Args:
        params: parameters or parameter groups.
        lr (eta): learning rate, default 1e-3.
        betas (beta1, beta2): default (0.9, 0.999).
        eps: Adam's denominator term (Form A), also the norm guard, default 1e-8.
        weight_decay (lambda): decoupled, scaled by wd_ratio on projected tensors; default 0.
        delta: cosine threshold factor of the scale-invariance test, default 0.1.
        wd_ratio: weight-decay factor r on projected tensors, default 0.1.
        nesterov: use beta1 m + (1 - beta1) g in the numerator.
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path for the moments (None = yes).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, delta: float = 0.1,
                 wd_ratio: float = 0.1, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None):
        check_positive("lr", lr)
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        _check_projection(delta, wd_ratio, eps)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                        wd_ratio=wd_ratio, nesterov=nesterov, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamP step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for group in self.param_groups:
            params, grads, states = gather(self, group, lambda p: {
                "exp_avg": zeros(p), "exp_avg_sq": zeros(p)})
            if not params:
                continue
            steps = advance_steps(states)
            foreach = use_foreach(group["foreach"], params)
            if group["maximize"]:
                grads = negate(grads, foreach)
            beta1, beta2 = group["betas"]
            adamp(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                  steps, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                  weight_decay=group["weight_decay"], delta=group["delta"],
                  wd_ratio=group["wd_ratio"], nesterov=group["nesterov"], foreach=foreach)
        return loss


@register("optimizer", "sgdp",
          paper="AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
          arxiv="2006.08217")
class SGDP(torch.optim.Optimizer):
    """SGDP: SGD with momentum whose update loses its radial part on scale-invariant weights.

    Args:
        params: parameters or parameter groups.
        lr (eta): learning rate (required by the reference; 0.1 here, a usual SGD value).
        momentum (mu): default 0.
        dampening (tau): default 0.
        weight_decay (lambda): decoupled, divided by (1 - mu), ratio r on projected tensors.
        nesterov: d = g + mu b instead of b.
        eps: norm guard of the projection, default 1e-8.
        delta: cosine threshold factor, default 0.1.
        wd_ratio: weight-decay factor on projected tensors, default 0.1.
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path for the momentum (None = yes).
    """

    def __init__(self, params: Iterable, lr: float = 0.1, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 eps: float = 1e-8, delta: float = 0.1, wd_ratio: float = 0.1, *,
                 maximize: bool = False, foreach: bool | None = None):
        check_positive("lr", lr)
        check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
        check_range("dampening", dampening, 0.0, 1.0)
        check_nonneg("weight_decay", weight_decay)
        _check_projection(delta, wd_ratio, eps)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio,
                        maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One SGDP step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for group in self.param_groups:
            params, grads, states = gather(self, group, lambda p: {"momentum": zeros(p)})
            if not params:
                continue
            advance_steps(states)
            foreach = use_foreach(group["foreach"], params)
            if group["maximize"]:
                grads = negate(grads, foreach)
            sgdp(params, grads, [s["momentum"] for s in states], lr=group["lr"],
                 momentum=group["momentum"], dampening=group["dampening"],
                 weight_decay=group["weight_decay"], delta=group["delta"],
                 wd_ratio=group["wd_ratio"], eps=group["eps"], nesterov=group["nesterov"],
                 foreach=foreach)
        return loss


__all__ = ["AdamP", "SGDP", "adamp", "sgdp", "project_radial"]
