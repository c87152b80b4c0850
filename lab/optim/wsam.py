"""WSAM: sharpness as an explicitly weighted regularizer, between the base optimizer and SAM.

Paper: "Sharpness-Aware Minimization Revisited: Weighted Sharpness as a Regularization Term", Yue
et al. (KDD 2023), arXiv 2305.15817. Reference code: ``atorch/optimizers/wsam.py``
(class ``WeightedSAM``) in intelligent-machine-learning/dlrover.

The objective, with the sharpness ``S(theta) = max_{||e|| <= rho} L(theta + e) - L(theta)``:

    min_theta  L(theta) + alpha * S(theta),        alpha = gamma / (1 - gamma),  gamma in [0, 1)

gamma = 0 gives the base optimizer's objective, gamma = 1/2 (alpha = 1) gives SAM's
``max_e L(theta + e)``, and gamma -> 1 weighs sharpness alone. One step, base optimizer B with
learning rate eta:

    g0 = grad L(theta);   e = rho T^2 g0 / (||T g0|| + eps)     (as in SAM, ``lab.optim.sam``)
    g1 = grad L(theta + e)                                        pass 2, same batch
    decoupled (default):  theta <- B(theta, g0);  theta <- theta - eta * alpha * (g1 - g0)
    coupled:              theta <- B(theta, alpha g1 + (1 - alpha) g0)

Symbols: g1 - g0 is the gradient of the sharpness term; T, rho, eps as in SAM. The decoupled form
keeps the sharpness step out of B's momentum and adaptive scaling (it uses the group's current
lr); for plain SGD both forms agree.

Where it departs from SAM: SAM hands B the perturbed gradient g1 alone; WSAM mixes g0 and g1 with
weight alpha, and by default applies the sharpness part outside B.

Choices (where the reference is specific or silent):
- Defaults follow the spec sheet: rho 0.05, gamma 0.9 (alpha = 9), eps 1e-12, adaptive False,
  decouple True, max_norm None. (The dlrover file's own signature defaults differ: gamma 0.88,
  max_norm 1.0.) gamma must lie in [0, 1): gamma = 1 divides by zero.
- ``max_norm``: as in the reference, the global norm of g0 and (separately) of g1 is clipped;
  the perturbation e is computed from the unclipped g0 (e is invariant to the scale of g0, so this
  matters only through eps).
- Same two-pass contract, BatchNorm handling, restore-by-copy and base-optimizer forms as SAM.
- State: nothing persistent besides B's; during a step WSAM holds theta and g0 (2 x p).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from lab.checks import check_positive, check_range
from lab.optim.sam import SAM
from lab.registry import register


def wsam_gradient(g0: Tensor, g1: Tensor, alpha: float) -> Tensor:
    """Coupled WSAM gradient ``alpha g1 + (1 - alpha) g0``."""
    return g1 * alpha + g0 * (1.0 - alpha)


@register("optimizer", "wsam",
          paper="Sharpness-Aware Minimization Revisited: Weighted Sharpness as a Regularization Term",
          arxiv="2305.15817")
class WSAM(SAM):
    """Weighted SAM: base optimizer on ``L + gamma/(1-gamma) * sharpness``.

    Args: as :class:`~lab.optim.sam.SAM`, plus
        gamma (gamma): weight of the sharpness, in [0, 1); alpha = gamma / (1 - gamma). Default 0.9.
        decouple: apply the sharpness step ``-lr alpha (g1 - g0)`` after B's step (default True)
            instead of handing B the mixed gradient.
        max_norm: clip the global norms of g0 and g1 to this value (None: no clipping).
    """

    keep_first_grads = True

    def __init__(self, params: Iterable, base_optimizer: Any = torch.optim.SGD, *,
                 lr: float | None = None, weight_decay: float | None = None, rho: float = 0.05,
                 gamma: float = 0.9, adaptive: bool = False, decouple: bool = True,
                 eps: float = 1e-12, max_norm: float | None = None, base_kwargs: dict | None = None,
                 check_finite: bool = True):
        check_range("gamma", gamma, 0.0, 1.0, hi_open=True)
        if not isinstance(decouple, bool):
            raise TypeError(f"decouple must be a bool, got {type(decouple).__name__}")
        if max_norm is not None:
            check_positive("max_norm", max_norm)
        super().__init__(params, base_optimizer, lr=lr, weight_decay=weight_decay, rho=rho,
                         adaptive=adaptive, eps=eps, base_kwargs=base_kwargs, check_finite=check_finite)
        self.decouple = decouple
        self.max_norm = max_norm
        for group in self.param_groups:
            group.setdefault("gamma", gamma)
        self.defaults["gamma"] = gamma

    def _descend(self, first_grads: dict[Tensor, Tensor]) -> None:
        pairs = [(p, first_grads[p]) for group in self.param_groups for p in group["params"]
                 if p in first_grads and p.grad is not None]
        if self.max_norm is not None and pairs:
            clip_global_norm_([g for _, g in pairs], self.max_norm)  # g0
            clip_global_norm_([p.grad for p, _ in pairs], self.max_norm)  # g1
        sharpness = {}
        with torch.no_grad():
            for group in self.param_groups:
                alpha = group["gamma"] / (1.0 - group["gamma"])
                for p in group["params"]:
                    if p not in first_grads or p.grad is None:
                        continue
                    g0, g1 = first_grads[p], p.grad
                    if self.decouple:
                        sharpness[p] = (g1 - g0, group, alpha)  # gradient of the sharpness term
                        p.grad = g0
                    else:
                        p.grad = wsam_gradient(g0, g1, alpha)
        self.base_optimizer.step()
        with torch.no_grad():
            for p, (sharp, group, alpha) in sharpness.items():
                # theta <- theta - lr * alpha * (g1 - g0)
                p.add_(sharp, alpha=-group["lr"] * alpha)


@torch.no_grad()
def clip_global_norm_(tensors: list[Tensor], max_norm: float) -> None:
    """Scale ``tensors`` in place so that their joint L2 norm is at most ``max_norm``."""
    total = torch.linalg.vector_norm(torch.stack([t.norm(2) for t in tensors]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # as torch.nn.utils.clip_grad_norm_
    for t in tensors:
        t.mul_(coef)


__all__ = ["WSAM", "clip_global_norm_", "wsam_gradient"]
