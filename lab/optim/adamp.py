"""AdamP and SGDP: remove the radial part of the update on scale-invariant weights.

Paper: "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
Heo et al., arXiv 2006.08217 (ICLR 2021). Equations follow the authors' package ``adamp`` 0.3.0.

Why: a weight followed by a normalization layer (BatchNorm, LayerNorm) is scale-invariant,
L(c w) = L(w), so its gradient is orthogonal to w and only the *direction* w/||w|| matters; its
effective step is ~ eta/||w||^2. Momentum adds a radial component that makes ||w|| grow fast,
shrinking the effective step prematurely. AdamP/SGDP detect such weights and project the radial
component out of the update, so ||w|| grows far less.

The update: a projection Pi(theta, g, u) -> (u', r) of the update u of a tensor theta with
``dim() > 1`` and raw gradient g (threshold delta, eps; r = weight-decay ratio ``wd_ratio``)::

    for view in (channel view: rows = theta.reshape(size(0), -1),  layer view: theta.reshape(1, -1)):
        c_i = |cos(g_i, theta_i)|                    per row i, on the RAW gradient g
        if max_i c_i < delta / sqrt(row length):     "g is orthogonal to theta": scale-invariant
            theta^_i = theta_i / (||theta_i|| + eps)
            u_i <- u_i - theta^_i <theta^_i, u_i>     remove the radial part
            return u, wd_ratio                        the first matching view wins
    return u, 1                                       (1-D tensors are never projected)

AdamP (Form A eps, decoupled decay with ratio r; lr eta, betas beta1, beta2, weight decay lambda,
moments m, v, step t)::

    m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
    u  = m / (sqrt(v)/sqrt(1 - beta2^t) + eps)      (nesterov: (beta1 m + (1 - beta1) g) in place of m)
    (u, r) = Pi(theta, g, u);  theta <- theta (1 - eta lambda r);  theta <- theta - eta/(1 - beta1^t) u

SGDP (momentum mu, dampening tau, momentum buffer b starts at 0, unlike torch.optim.SGD)::

    b <- mu b + (1 - tau) g;  d = g + mu b (nesterov) or d = b
    (d, r) = Pi(theta, g, d);  theta <- theta (1 - eta lambda r / (1 - mu));  theta <- theta - eta d

Intuition: on a scale-invariant weight only the tangential part of a step changes the function;
the radial part only inflates ||w||, so removing it keeps the effective step size.

SGDP follows the paper's Algorithm (SGDP, Algorithm 1 of arXiv 2006.08217): the momentum p_t is
accumulated from the raw gradients and only the update q_t = Pi(p_t) is projected; the buffer
keeps its radial part. The authors' package ``adamp`` 0.3.0 differs when ``nesterov=False``: there
``d_p`` *is* the buffer, and its in-place projection (``perturb -= ...``) also removes the radial
part from the momentum, which then stays projected in later steps (on a conv + BatchNorm model
the two drift apart by ~1 in 30 steps). ``project_momentum=True`` reproduces the package: on a
projected step the buffer is replaced by its projection (with ``nesterov=True`` the package's
``d_p`` is a new tensor, so the flag changes nothing there, as in the package).

Where it departs from AdamW (AdamP) and SGD (SGDP): only the projection Pi and the decay ratio r.
AdamP with ``delta = 0`` never projects and is exactly torch.optim.AdamW; SGDP with
``delta = 0``, ``weight_decay = 0`` and ``dampening = 0`` is exactly torch.optim.SGD.

Choices (kept for parity with the reference where it is specific):
- The cosine (as ``F.cosine_similarity``) is taken on the raw gradient; a zero gradient counts as
  scale-invariant (cos = 0), and so does a gradient whose squared norm overflows the dtype (|g|
  above ~1e19 in float32: ||g||^2 = inf, cos = 0, as ``F.cosine_similarity`` gives).
- SGDP divides the decay by (1 - mu) (the package does).
- SGDP's default ``project_momentum=False`` is the paper's algorithm (buffer unprojected);
  ``True`` is the package's.
- The code folds 1/sqrt(1 - beta2^t) into eps and the step size (same quantity, one op fewer), so
  the update u it projects is sqrt(1 - beta2^t) times the u above (the projection is linear, the
  result the same).

Paths: the moment updates run through ``torch._foreach_*``; the projection is a per-tensor loop
(it needs per-row reductions and a data-dependent branch). ``fused=True`` runs
:func:`adamp_fused` / :func:`sgdp_fused` compiled (:mod:`lab.optim._fused`): both views' cosines
are computed and the branch becomes a ``torch.where``. A NaN/Inf gradient raises before the step
(``check_finite=False`` to opt out).

State (per parameter): AdamP ``step``, ``exp_avg``, ``exp_avg_sq``; SGDP ``step``, ``momentum``.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

from lab.checks import check_betas, check_nonneg, check_positive, check_range
from lab.optim import _fused
from lab.optim._common import (bias_correction, by_step, evaluate, keep_path_options, path_options,
                               prepare, zeros)
from lab.registry import register


def scale_invariant_view(param: Tensor, grad: Tensor, *, delta: float, eps: float) -> int | None:
    """Rows of the first view in which ``theta`` looks scale-invariant, or None.

    Channel view first (rows = output channels), then layer view (1 row); a view matches when
    ``max_i |cos(g_i, theta_i)| < delta / sqrt(row length)``. The cosines of both views come from
    one pass of per-row reductions (the layer view sums the rows): ``cos = <g, theta> /
    max(||g|| ||theta||, eps)``, the value of ``F.cosine_similarity`` used by the reference.
    """
    if param.dim() <= 1:
        return None
    p_rows = param.reshape(param.shape[0], -1)                               # (rows, n)
    g_rows = grad.reshape(param.shape[0], -1)
    dot = torch.linalg.vecdot(p_rows, g_rows, dim=1)                         # (rows,)
    p_sq = torch.linalg.vector_norm(p_rows, dim=1).square_()
    g_sq = torch.linalg.vector_norm(g_rows, dim=1).square_()
    views = ((dot, p_sq, g_sq, p_rows.shape[1]),                              # channel view
             (dot.sum(0, keepdim=True), p_sq.sum(0, keepdim=True),            # layer view
              g_sq.sum(0, keepdim=True), param.numel()))
    for v_dot, v_p_sq, v_g_sq, length in views:
        cosine = v_dot.abs() / (v_p_sq.sqrt() * v_g_sq.sqrt()).clamp_min(eps)  # (rows,) or (1,)
        if cosine.max() < delta / math.sqrt(length):
            return v_dot.shape[0]
    return None


def remove_radial(param: Tensor, update: Tensor, rows: int, *, eps: float) -> Tensor:
    """``u_i - theta^_i <theta^_i, u_i>`` per row of the ``rows``-row view, theta^ = theta/||theta||."""
    p_view = param.reshape(rows, -1)                                            # (rows, n)
    p_hat = p_view / (torch.linalg.vector_norm(p_view, dim=1, keepdim=True) + eps)
    u_view = update.reshape(rows, -1)
    radial = torch.linalg.vecdot(p_hat, u_view, dim=1).unsqueeze(1)             # (rows, 1)
    return (u_view - p_hat * radial).reshape(update.shape)


def project_radial(param: Tensor, grad: Tensor, update: Tensor, *, delta: float, eps: float,
                   wd_ratio: float) -> tuple[Tensor, float]:
    """``Pi``: the update without its radial component, and the weight-decay ratio r."""
    rows = scale_invariant_view(param, grad, delta=delta, eps=eps)
    if rows is None:
        return update, 1.0
    return remove_radial(param, update, rows, eps=eps), wd_ratio


def _scale(params: list[Tensor], factors: list[float], foreach: bool) -> None:
    """``theta_i <- theta_i * factor_i`` (weight decay with a per-tensor ratio)."""
    if foreach:
        torch._foreach_mul_(params, factors)
        return
    for p, f in zip(params, factors):
        p.mul_(f)


def _apply(params: list[Tensor], numers: list[Tensor], denoms: list[Tensor] | None,
           views: list[int | None], *, step_size: float, decay: list[float] | None, eps: float,
           foreach: bool) -> None:
    """``theta <- theta * decay - step_size * Pi(numer / denom)``; the projection only where a
    view matched, the others in one ``addcdiv`` (or ``add``) without materializing the update."""
    updates = {}
    for i, rows in enumerate(views):                   # projected tensors: u -> Pi(u), before decay
        if rows is not None:
            u = numers[i] / denoms[i] if denoms is not None else numers[i]
            updates[i] = remove_radial(params[i], u, rows, eps=eps)
    if decay is not None:
        _scale(params, decay, foreach)
    plain = [i for i, rows in enumerate(views) if rows is None]
    if foreach and plain:
        p, n = [params[i] for i in plain], [numers[i] for i in plain]
        if denoms is not None:
            torch._foreach_addcdiv_(p, n, [denoms[i] for i in plain], value=-step_size)
        else:
            torch._foreach_add_(p, n, alpha=-step_size)
    elif plain:
        for i in plain:
            if denoms is not None:
                params[i].addcdiv_(numers[i], denoms[i], value=-step_size)
            else:
                params[i].add_(numers[i], alpha=-step_size)
    for i, u in updates.items():
        params[i].add_(u, alpha=-step_size)


def adamp(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
          exp_avg_sqs: list[Tensor], steps: list[float], *, lr: float, beta1: float, beta2: float,
          eps: float, weight_decay: float, delta: float, wd_ratio: float, nesterov: bool,
          foreach: bool) -> None:
    """Functional AdamP step; in place on params and state."""
    for t, (p, g, m, v) in by_step(steps, params, grads, exp_avgs, exp_avg_sqs):
        bc1, bc2 = bias_correction(beta1, t), bias_correction(beta2, t)
        # m_hat/(sqrt(v_hat) + eps) = (sqrt(bc2)/bc1) m/(sqrt(v) + eps sqrt(bc2))
        step_size = lr * math.sqrt(bc2) / bc1
        views = [scale_invariant_view(pi, gi, delta=delta, eps=eps) for pi, gi in zip(p, g)]
        if foreach:
            torch._foreach_lerp_(m, g, 1 - beta1)                       # m, v as Adam
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, g, g, value=1 - beta2)
            denom = list(torch._foreach_sqrt(v))                        # sqrt(v) + eps sqrt(bc2)
            torch._foreach_add_(denom, eps * math.sqrt(bc2))
            numer = list(torch._foreach_lerp(m, g, 1 - beta1)) if nesterov else m
        else:
            denom, numer = [], []
            for gi, mi, vi in zip(g, m, v):
                mi.lerp_(gi, 1 - beta1)
                vi.mul_(beta2).addcmul_(gi, gi, value=1 - beta2)
                denom.append(vi.sqrt().add_(eps * math.sqrt(bc2)))
                numer.append(torch.lerp(mi, gi, 1 - beta1) if nesterov else mi)
        decay = ([1 - lr * weight_decay * (1.0 if rows is None else wd_ratio) for rows in views]
                 if weight_decay > 0 else None)                        # theta (1 - eta lambda r)
        _apply(p, numer, denom, views, step_size=step_size, decay=decay, eps=eps, foreach=foreach)


def sgdp(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], *, lr: float,
         momentum: float, dampening: float, weight_decay: float, delta: float, wd_ratio: float,
         eps: float, nesterov: bool, foreach: bool, project_momentum: bool = False) -> None:
    """Functional SGDP step; in place on params and momentum buffers.

    ``project_momentum`` (package behaviour, only without nesterov): a projected step writes
    ``Pi(b)`` back into the buffer b, and the step uses that.
    """
    views = [scale_invariant_view(p, g, delta=delta, eps=eps) for p, g in zip(params, grads)]
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
    decay = ([1 - lr * weight_decay * (1.0 if rows is None else wd_ratio) / (1 - momentum)
              for rows in views] if weight_decay > 0 else None)        # theta (1 - eta lambda r/(1-mu))
    to_project = views
    if project_momentum and not nesterov:                               # b <- Pi(b), d = b
        for b, p, rows in zip(momentum_buffers, params, views):
            if rows is not None:
                b.copy_(remove_radial(p, b, rows, eps=eps))
        to_project = [None] * len(views)
    _apply(params, d, None, to_project, step_size=lr, decay=decay, eps=eps, foreach=foreach)


def _projection_fused(param: Tensor, grad: Tensor, update: Tensor, *, delta: Tensor, eps: Tensor,
                      ) -> tuple[Tensor | None, Tensor]:
    """``Pi`` inside a compiled graph, as ``(coef, matched)``: the projected update is
    ``u_i - theta_i coef_i`` per row of ``theta.reshape(size(0), -1)`` (``coef`` None for 1-D).

    Both views are evaluated and the first match chosen with ``torch.where`` (the eager code
    branches); ``matched`` is a 0-d bool tensor. Every reduction both views need (<theta_i, g_i>,
    ||theta_i||^2, ||g_i||^2 and <theta_i, u_i> per row; the layer view sums the rows) comes from
    one pass over the tensor, and ``coef_i = <theta_i, u_i> / (||theta_i|| + eps)^2`` (channel
    view) or ``<theta, u> / (||theta|| + eps)^2`` (layer view), 0 without a match: the same vector
    as ``theta^ <theta^, u>`` with theta^ = theta / (||theta|| + eps).
    """
    if param.dim() <= 1:
        return None, torch.zeros((), dtype=torch.bool, device=param.device)
    rows = param.shape[0]
    p_rows, g_rows = param.reshape(rows, -1), grad.reshape(rows, -1)           # (rows, n)
    u = update.reshape(rows, -1)
    dot, pu = (p_rows * g_rows).sum(1), (p_rows * u).sum(1)                    # (rows,)
    p_sq, g_sq = (p_rows * p_rows).sum(1), (g_rows * g_rows).sum(1)
    p_norm = p_sq.sqrt()
    cos_c = dot.abs() / (p_norm * g_sq.sqrt()).clamp_min(eps)                  # channel view
    p_norm_l = p_sq.sum().sqrt()
    cos_l = dot.sum().abs() / (p_norm_l * g_sq.sum().sqrt()).clamp_min(eps)    # layer view
    channel = cos_c.max() < delta / math.sqrt(p_rows.shape[1])
    layer = cos_l < delta / math.sqrt(param.numel())
    coef_c = pu / (p_norm + eps).square()                                      # (rows,)
    coef_l = pu.sum() / (p_norm_l + eps).square()                              # 0-d
    coef = torch.where(channel, coef_c, torch.where(layer, coef_l, torch.zeros_like(coef_l)))
    return coef, channel | layer


def _realized(coefs: list[Tensor | None]) -> list[Tensor | None]:
    """The per-row coefficients written to one buffer before the update pass reads them.

    Left inline, inductor recomputes a row's coefficient (square roots, float64 divisions) once
    per vector of 16 elements in the update loop, which then costs more than the memory it moves;
    concatenated (a cat that the compile options keep out of the pointwise loops) they are
    computed once.
    """
    present = [c for c in coefs if c is not None]
    if not present:
        return coefs
    parts = iter(torch.cat(present).split([c.shape[0] for c in present]))
    return [None if c is None else next(parts) for c in coefs]


def _apply_projection(param: Tensor, update: Tensor, coef: Tensor | None) -> Tensor:
    """``u - theta coef`` row by row (``coef`` from :func:`_projection_fused`)."""
    if coef is None:
        return update
    rows = param.shape[0]
    return (update.reshape(rows, -1) - param.reshape(rows, -1) * coef.unsqueeze(1)).reshape(update.shape)


def adamp_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                exp_avg_sqs: list[Tensor], steps: list[Tensor], *, lr: Tensor, beta1: Tensor,
                beta2: Tensor, eps: Tensor, weight_decay: Tensor, delta: Tensor, wd_ratio: Tensor,
                nesterov: bool, maximize: bool) -> None:
    """:func:`adamp` for ``torch.compile`` (hyperparameters as 0-d tensors).

    The moments are updated tensor by tensor, right before that tensor's projection. Unlike
    :func:`sgdp_fused`, the projection coefficients stay inline: writing them to a buffer first
    (:func:`_realized`) made this update slower (2.35x -> 3.65x AdamW fused, measured).
    """
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    t = [step.to(torch.float64) for step in steps]
    bc1, bc2 = [1 - beta1 ** ti for ti in t], [1 - beta2 ** ti for ti in t]
    eps_t = _fused.per_tensor([eps * b2.sqrt() for b2 in bc2])
    step_sizes = _fused.per_tensor([lr * b2.sqrt() / b1 for b1, b2 in zip(bc1, bc2)])
    for p, g, m, v, e, step_size in zip(params, grads, exp_avgs, exp_avg_sqs, eps_t, step_sizes):
        m.lerp_(g, 1 - beta1)                                              # m, v as Adam
        v.mul_(beta2).add_(g * g * (1 - beta2))
        numer = torch.lerp(m, g, 1 - beta1) if nesterov else m
        u = numer / (v.sqrt() + e)                                         # sqrt(bc2) times Adam's u
        coef, matched = _projection_fused(p, g, u, delta=delta, eps=eps)
        u = _apply_projection(p, u, coef)
        ratio = torch.where(matched, wd_ratio, torch.ones_like(wd_ratio))
        p.mul_(1 - lr * weight_decay * ratio)                              # theta (1 - eta lambda r)
        p.sub_(step_size * u)


def sgdp_fused(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor],
               steps: list[Tensor], *, lr: Tensor, momentum: Tensor, dampening: Tensor,
               weight_decay: Tensor, delta: Tensor, wd_ratio: Tensor, eps: Tensor, nesterov: bool,
               project_momentum: bool, maximize: bool) -> None:
    """:func:`sgdp` for ``torch.compile`` (hyperparameters as 0-d tensors); two passes per tensor."""
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    updates, coefs, matched = [], [], []
    for p, g, b in zip(params, grads, momentum_buffers):
        b.mul_(momentum).add_(g * (1 - dampening))                      # b <- mu b + (1-tau) g
        d = g + momentum * b if nesterov else b
        coef, match = _projection_fused(p, g, d, delta=delta, eps=eps)
        updates.append(d)
        coefs.append(coef)
        matched.append(match)
    decays = _fused.per_tensor([1 - lr * weight_decay * torch.where(match, wd_ratio, 1.0)
                                / (1 - momentum) for match in matched])  # theta (1 - eta lambda r/(1-mu))
    for p, b, d, coef, decay in zip(params, momentum_buffers, updates, _realized(coefs), decays):
        d = _apply_projection(p, d, coef)
        if project_momentum and not nesterov:
            b.copy_(d)                                                   # package: b <- Pi(b)
        p.mul_(decay)
        p.sub_(lr * d)


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
        fused: run the whole update as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, delta: float = 0.1,
                 wd_ratio: float = 0.1, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, check_finite: bool = True):
        check_positive("lr", lr)
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        _check_projection(delta, wd_ratio, eps)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                        wd_ratio=wd_ratio, nesterov=nesterov, maximize=maximize,
                        **path_options("AdamP", foreach=foreach, fused=fused,
                                       check_finite=check_finite))
        super().__init__(params, defaults)
        keep_path_options(self)

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamP step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            prepared = prepare(self, group, lambda p: {
                "exp_avg": zeros(p), "exp_avg_sq": zeros(p)})
            if prepared is None:
                continue
            params, grads, states, steps, foreach, fused = prepared
            beta1, beta2 = group["betas"]
            if fused:
                _fused.run(self, index, adamp_fused,
                           (params, grads, [s["exp_avg"] for s in states],
                            [s["exp_avg_sq"] for s in states]), states,
                           dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                weight_decay=group["weight_decay"], delta=group["delta"],
                                wd_ratio=group["wd_ratio"]),
                           nesterov=group["nesterov"], maximize=group["maximize"])
                continue
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
        project_momentum: the ``adamp`` package's behaviour (without nesterov, a projected step
            also projects the momentum buffer in place); False = the paper's Algorithm.
        maximize: ascend instead of descend.
        foreach: use the ``torch._foreach_*`` path for the momentum (None = yes).
        fused: run the whole update as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable, lr: float = 0.1, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 eps: float = 1e-8, delta: float = 0.1, wd_ratio: float = 0.1, *,
                 project_momentum: bool = False, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, check_finite: bool = True):
        check_positive("lr", lr)
        check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
        check_range("dampening", dampening, 0.0, 1.0)
        check_nonneg("weight_decay", weight_decay)
        _check_projection(delta, wd_ratio, eps)
        if not isinstance(project_momentum, bool):
            raise TypeError(f"project_momentum must be a bool, got {type(project_momentum).__name__}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio,
                        project_momentum=project_momentum, maximize=maximize,
                        **path_options("SGDP", foreach=foreach, fused=fused,
                                       check_finite=check_finite))
        super().__init__(params, defaults)
        keep_path_options(self)

    @torch.no_grad()
    def step(self, closure=None):
        """One SGDP step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = evaluate(closure)
        for index, group in enumerate(self.param_groups):
            prepared = prepare(self, group, lambda p: {"momentum": zeros(p)})
            if prepared is None:
                continue
            params, grads, states, _, foreach, fused = prepared
            buffers = [s["momentum"] for s in states]
            project_momentum = group.get("project_momentum", False)
            if fused:
                _fused.run(self, index, sgdp_fused, (params, grads, buffers), states,
                           dict(lr=group["lr"], momentum=group["momentum"],
                                dampening=group["dampening"], weight_decay=group["weight_decay"],
                                delta=group["delta"], wd_ratio=group["wd_ratio"], eps=group["eps"]),
                           nesterov=group["nesterov"], project_momentum=project_momentum,
                           maximize=group["maximize"], options=_fused.CAT_BUFFERS)
                continue
            sgdp(params, grads, buffers, lr=group["lr"],
                 momentum=group["momentum"], dampening=group["dampening"],
                 weight_decay=group["weight_decay"], delta=group["delta"],
                 wd_ratio=group["wd_ratio"], eps=group["eps"], nesterov=group["nesterov"],
                 foreach=foreach, project_momentum=project_momentum)
        return loss


__all__ = ["AdamP", "SGDP", "adamp", "sgdp", "adamp_fused", "sgdp_fused", "project_radial", "scale_invariant_view", "remove_radial"]
