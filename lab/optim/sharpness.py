"""Sharpness of a minimum: the top eigenvalue of the loss Hessian, by power iteration.

The measure used in the SAM/WSAM lessons ("flatter minimum" = smaller lambda_max):

    lambda_max(H),   H = d^2 L / d theta^2   (all parameters flattened into one vector)

Power iteration needs only Hessian-vector products, which autograd gives without forming H
(Pearlmutter's trick, one double-backward per product):

    H v = d/d theta ( grad L(theta) . v )

    v_0 ~ N(0, I) / ||.||;   w = H v_k;   lambda_k = v_k . w;   v_{k+1} = w / ||w||

The iteration stops when ``|lambda_k - lambda_{k-1}| <= tol |lambda_k|`` or after ``iters``
products. It converges to the eigenvalue of largest *magnitude*, lambda_dom. At (or near) a
minimum H is positive semi-definite and that is lambda_max. Elsewhere (on a ridge, at a saddle)
a negative eigenvalue can dominate; then a second power iteration on the shifted matrix
``H - lambda_dom I`` (whose eigenvalues are all >= 0, the largest being lambda_max - lambda_dom)
recovers the other end of the spectrum. :func:`hessian_eigen_range` returns both ends,
:func:`top_hessian_eigenvalue` the largest (algebraic) eigenvalue lambda_max, the usual
"sharpness" number.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from lab.checks import check_int, check_nonneg


def hessian_vector_product(grads: Sequence[Tensor], params: Sequence[Tensor],
                           vector: Sequence[Tensor]) -> list[Tensor]:
    """``H v`` from gradients built with ``create_graph=True`` (the graph is kept for reuse)."""
    hv = torch.autograd.grad(grads, params, grad_outputs=list(vector), retain_graph=True,
                             allow_unused=True)
    return [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]


def top_hessian_eigenvalue(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], *,
                           iters: int = 20, tol: float = 1e-4,
                           generator: torch.Generator | None = None) -> float:
    """Largest (algebraic) Hessian eigenvalue lambda_max of ``loss_fn()`` w.r.t. ``params``.

    One power iteration; a second, shifted one only when the dominant eigenvalue is negative.
    Arguments as in :func:`hessian_eigen_range`.
    """
    return hessian_eigen_range(loss_fn, params, iters=iters, tol=tol, generator=generator,
                               both=False)[1]


def hessian_eigen_range(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], *,
                        iters: int = 20, tol: float = 1e-4, generator: torch.Generator | None = None,
                        both: bool = True) -> tuple[float, float]:
    """``(lambda_min, lambda_max)`` of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    Two power iterations (plain, then shifted by the dominant eigenvalue). With ``both=False``
    the shifted one runs only when it is needed for lambda_max (then lambda_min is NaN when
    not computed).

    Args:
        loss_fn: computes the scalar loss from the current parameters (called once).
        params: the tensors (requires_grad) the Hessian is taken over.
        iters: maximum number of Hessian-vector products per power iteration.
        tol: relative change of the estimate at which to stop early.
        generator: for the random start vectors (explicit seeding; default: a fresh seed-0 one).
        both: compute both ends even when lambda_max is already known.
    """
    check_int("iters", iters, minimum=1)
    check_nonneg("tol", tol)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("params must contain at least one tensor with requires_grad=True")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    with torch.enable_grad():
        loss = loss_fn()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        pairs = [(g, p) for g, p in zip(grads, params) if g is not None and g.requires_grad]
        if not pairs:
            return 0.0, 0.0  # the loss is (at most) linear in params: H = 0
        grads, params = [g for g, _ in pairs], [p for _, p in pairs]
        dominant = _power_iteration(grads, params, 0.0, iters, tol, generator)
        if not both and dominant >= 0:
            return float("nan"), dominant
        # H - dominant I has eigenvalues lambda_i - dominant, all of one sign; its dominant one
        # is the far end of H's spectrum
        other = dominant + _power_iteration(grads, params, dominant, iters, tol, generator)
    return (other, dominant) if dominant >= 0 else (dominant, other)


def _power_iteration(grads: list[Tensor], params: list[Tensor], shift: float, iters: int,
                     tol: float, generator: torch.Generator) -> float:
    """Dominant eigenvalue of ``H - shift I`` by power iteration on Hessian-vector products."""
    v = _normalized([torch.randn(p.shape, generator=generator, dtype=p.dtype,
                                 device=generator.device).to(p.device)
                     for p in params])
    eigenvalue = 0.0
    for k in range(iters):
        hv = hessian_vector_product(grads, params, v)
        if shift:
            hv = [h - shift * x for h, x in zip(hv, v)]  # (H - shift I) v
        new = sum((a * b).sum() for a, b in zip(v, hv)).item()  # Rayleigh quotient
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if norm.item() == 0.0:
            return 0.0
        v = [h.detach() / norm for h in hv]
        converged = k > 0 and abs(new - eigenvalue) <= tol * abs(new)
        eigenvalue = new
        if converged:
            break
    return float(eigenvalue)


def _normalized(vectors: list[Tensor]) -> list[Tensor]:
    norm = torch.sqrt(sum((v * v).sum() for v in vectors))
    return [v / norm for v in vectors]


__all__ = ["hessian_eigen_range", "hessian_vector_product", "top_hessian_eigenvalue"]
