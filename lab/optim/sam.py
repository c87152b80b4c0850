"""SAM: step with the gradient taken at the worst point of a small ball around the weights.

Paper: "Sharpness-Aware Minimization for Efficiently Improving Generalization", Foret et al.
(with Kleinberg, Mobahi, Neyshabur), arXiv 2010.01412; the adaptive variant (ASAM) is "ASAM:
Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural Networks", Kwon
et al., arXiv 2102.11600. In the lab SAM is also the baseline of WSAM (``lab.optim.wsam``).

The objective: ``min_theta  max_{||e||_2 <= rho}  L(theta + e)``. One step, with a base optimizer B
(SGD, Adam, ... anything that reads ``p.grad``):

    g     = grad L(theta)                          pass 1 (forward + backward)
    n     = || T g ||_2                            one norm over every parameter of every group
    e     = rho * T^2 g / (n + eps)                first-order solution of the inner max
    g_SAM = grad L(theta + e)                      pass 2, on the same batch
    theta <- B(theta, g_SAM)                       B applies its own momentum, decay, lr

Symbols: theta = all parameters; rho = radius of the ball; T = diag(|theta|) in adaptive mode
(ASAM, radius measured relative to each weight's size) and the identity otherwise; eps = 1e-12
keeps the division finite at a zero gradient (then e = 0).

Intuition: at a sharp minimum a step of length rho already climbs far up the wall, so the
gradient there pushes the weights out; in a flat basin it stays small, so SAM settles there.

Where it departs from the base optimizer B (SGD, Adam, ...): B steps with the gradient taken at
theta + e instead of at theta, which costs a second forward and backward pass on the same batch.

Choices (what the lab settles where the reference leaves it open):
- ``step(closure)`` runs both passes itself and returns the pass-1 loss. It zeroes the gradients
  before each pass, so a closure that forgets to (or a stray ``backward()`` before ``step``)
  cannot double-count the gradient.
- BatchNorm running statistics are updated in pass 1 only: every ``_BatchNorm`` that runs in
  training mode during pass 2 has its buffers (running mean, variance, batch count) saved before
  its forward and copied back after the pass. This is exact for any momentum (also ``None``,
  the cumulative average) and needs no reference to the model.
- theta is restored by copying the saved weights back (subtracting e is not bit-exact).
- Parameters whose gradient is None in pass 1 are not perturbed; B skips those without a
  gradient in pass 2. Sparse gradients raise ``SparseGradientError``.
- The base optimizer is a class (built on the same parameters with ``lr``, ``weight_decay`` and
  ``base_kwargs``), an instance (its parameters must be the same), or a registry spec such as
  ``"sgd(momentum=0.9)"``. SAM shares B's ``param_groups``, so an LR scheduler can drive either.
- State: nothing persists except B's state; during a step SAM holds a copy of theta (1 x p).
  ``state_dict()`` is ``{"base": B.state_dict()}``.
- A NaN/Inf gradient in either pass raises ``ValueError`` naming the parameter, with theta
  restored and B not stepped (``check_finite=False`` to opt out). ``lr``, ``weight_decay`` and the
  numbers in ``base_kwargs`` must be finite (torch.optim.SGD takes ``lr=nan`` silently).
  Complex parameters are rejected (``TypeError``).

:class:`WrapperOptimizer` (a method that computes a gradient its own way and lets a base optimizer
apply it) and :func:`frozen_batchnorm_stats` are shared with WSAM and the evolution strategies.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from lab.checks import check_nonneg, check_positive
from lab.optim._common import check_finite, check_grad, evaluate
from lab.registry import get, parse_spec, register

Closure = Callable[[], Tensor]


# ---- functional core --------------------------------------------------------------------------
def perturbation(params: list[Tensor], grads: list[Tensor], *, rho: float, adaptive: bool,
                 eps: float, norm: Tensor) -> list[Tensor]:
    """``e = rho T^2 g / (norm + eps)`` per tensor, ``T = |theta|`` (adaptive) or 1."""
    scale = rho / (norm + eps)
    if adaptive:
        return [p * p * g * scale for p, g in zip(params, grads)]
    return [g * scale for g in grads]


def scaled_grad_norm(pairs: Iterable[tuple[Tensor, Tensor, bool]]) -> Tensor:
    """``|| T g ||_2`` over all ``(param, grad, adaptive)`` triples (one global norm)."""
    norms = [((p.abs() * g) if adaptive else g).norm(2) for p, g, adaptive in pairs]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)


# ---- shared shell: a gradient computed here, applied by a base optimizer ------------------------
def build_base_optimizer(params: list, base_optimizer: Any, settings: dict[str, Any],
                         owner: str) -> torch.optim.Optimizer:
    """The base optimizer from a class, an instance or a registry spec, on ``params``.

    ``settings`` are the keyword arguments for a class or spec (e.g. ``{"lr": 0.1}``); they must
    be empty for an instance, which carries its own.
    """
    if isinstance(base_optimizer, torch.optim.Optimizer):
        if settings:
            raise ValueError(f"base_optimizer is an instance, so {', '.join(settings)} must be set "
                             f"on it, not passed to {owner}")
        given = {id(p) for p in _flat_params(params)}
        held = {id(p) for g in base_optimizer.param_groups for p in g["params"]}
        if given != held:
            raise ValueError(f"params of {owner} must be exactly the parameters of the "
                             f"base_optimizer instance")
        base = base_optimizer
    elif isinstance(base_optimizer, str):
        name, spec_kwargs = parse_spec(base_optimizer)
        base = get("optimizer", name)(params, **{**spec_kwargs, **settings})
    elif isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer):
        base = base_optimizer(params, **settings)
    else:
        raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class, an instance or a "
                        f"registry spec string, got {type(base_optimizer).__name__}")
    if getattr(base, "requires_closure", False) or getattr(base, "requires_fitness", False):
        raise ValueError(f"base_optimizer of {owner} must take a plain gradient step, "
                         f"got {type(base).__name__}")
    return base


def _check_settings(settings: dict[str, Any]) -> None:
    """The numbers handed to the base optimizer: lr >= 0 (torch.optim allows 0), weight_decay >= 0, all finite.

    torch.optim accepts ``lr=nan`` (``nan < 0`` is False) and then writes NaN into every weight.
    """
    for key, value in settings.items():
        if key == "lr":
            check_nonneg("lr", value)
        elif key == "weight_decay":
            check_nonneg("weight_decay", value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be finite, got {value}")
        elif isinstance(value, (tuple, list)):
            for item in value:
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(f"{key} must hold finite numbers, got {value}")


def _flat_params(params: list) -> list[Tensor]:
    flat = []
    for item in params:
        flat.extend(item["params"] if isinstance(item, dict) else [item])
    return flat


class WrapperOptimizer(torch.optim.Optimizer):
    """Computes a gradient its own way, writes it to ``p.grad`` and lets ``base_optimizer`` step.

    Shares the base optimizer's ``param_groups`` (the wrapper's hyperparameters are added to each
    group); ``state_dict()`` holds the base optimizer's state plus :meth:`extra_state`.
    """

    def __init__(self, params: Iterable, base_optimizer: Any, defaults: dict[str, Any],
                 settings: dict[str, Any]):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        settings = {k: v for k, v in settings.items() if v is not None}
        _check_settings(settings)
        for p in _flat_params(params):
            if isinstance(p, Tensor) and p.is_complex():
                raise TypeError(f"{type(self).__name__} does not support complex parameters (got "
                                f"{p.dtype}); optimize torch.view_as_real(param) instead")
        base = build_base_optimizer(params, base_optimizer, settings, type(self).__name__)
        super().__init__(base.param_groups, defaults)
        self.base_optimizer = base
        self.param_groups = base.param_groups
        self.defaults = {**base.defaults, **defaults}

    def extra_state(self) -> dict[str, Any]:
        """What the wrapper itself keeps across steps (nothing for SAM)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base_optimizer.state_dict(), **self.extra_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
        self.load_extra_state(state_dict)


@contextlib.contextmanager
def frozen_batchnorm_stats() -> Iterator[None]:
    """Inside the block, BatchNorm layers run in training mode but keep their running statistics.

    Every ``_BatchNorm`` module called inside (of any model) has its running mean, variance and
    batch count saved just before its first forward and copied back on exit.
    """
    saved: dict[torch.nn.Module, list[tuple[Tensor, Tensor]]] = {}

    def save(module: torch.nn.Module, args: Any) -> None:
        if isinstance(module, _BatchNorm) and module.training and module not in saved:
            buffers = (module.running_mean, module.running_var, module.num_batches_tracked)
            saved[module] = [(b, b.detach().clone()) for b in buffers if b is not None]

    handle = torch.nn.modules.module.register_module_forward_pre_hook(save)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for pairs in saved.values():
                for buffer, copy in pairs:
                    buffer.copy_(copy)


@register("optimizer", "sam", paper="Sharpness-Aware Minimization for Efficiently Improving Generalization",
          arxiv="2010.01412")
class SAM(WrapperOptimizer):
    """Sharpness-aware minimization: the base optimizer steps with the gradient at theta + e.

    Args:
        params: parameters or parameter groups.
        base_optimizer: a ``torch.optim.Optimizer`` class, an instance on the same parameters, or
            a registry spec such as ``"sgd(momentum=0.9)"`` (default ``torch.optim.SGD``).
        lr: learning rate handed to the base optimizer (None: the base's own default).
        weight_decay: handed to the base optimizer when given.
        rho (rho): radius of the ball, default 0.05 (ASAM: about 2.0).
        adaptive: ASAM's scale-invariant ball, ``T = |theta|``.
        eps: added to the gradient norm, default 1e-12.
        base_kwargs: other keyword arguments of the base optimizer (``{"momentum": 0.9}``).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.

    ``step(closure)``: the closure computes the loss on one batch, calls ``backward()`` and
    returns the loss; SAM calls it twice and returns the first loss.
    """

    requires_closure = True
    keep_first_grads = False  # WSAM needs g(theta) after pass 2; SAM does not

    def __init__(self, params: Iterable, base_optimizer: Any = torch.optim.SGD, *,
                 lr: float | None = None, weight_decay: float | None = None, rho: float = 0.05,
                 adaptive: bool = False, eps: float = 1e-12, base_kwargs: dict | None = None,
                 check_finite: bool = True):
        check_nonneg("rho", rho)
        check_nonneg("eps", eps)
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
        if base_kwargs is not None and not isinstance(base_kwargs, dict):
            raise TypeError(f"base_kwargs must be a dict, got {type(base_kwargs).__name__}")
        settings = {"lr": lr, "weight_decay": weight_decay, **(base_kwargs or {})}
        super().__init__(params, base_optimizer,
                         dict(rho=rho, adaptive=adaptive, eps=eps, check_finite=check_finite), settings)

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        if closure is None:
            raise TypeError(f"{type(self).__name__}.step needs a closure that computes the loss on "
                            f"one batch, calls backward() and returns the loss")
        self.zero_grad()
        loss = evaluate(closure)  # pass 1 at theta; BatchNorm statistics update here
        self._check_finite()
        with torch.no_grad():
            params, first_grads = self._ascend()
        self.zero_grad()
        with frozen_batchnorm_stats():
            evaluate(closure)  # pass 2 at theta + e, same batch
        with torch.no_grad():
            for p, theta in params:
                p.copy_(theta)  # back to theta, bit-exact
        self._check_finite()
        self._descend(first_grads)
        return loss

    def _check_finite(self) -> None:
        """:func:`~lab.optim._common.check_finite` over every group's gradients."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                check_grad(type(self).__name__, p, p.grad)  # sparse gradients first: no norm for them
            check_finite(self, group, params, [p.grad for p in params])

    def _ascend(self) -> tuple[list[tuple[Tensor, Tensor]], dict[Tensor, Tensor]]:
        """theta <- theta + e; returns ``[(p, saved theta)]`` and (if kept) ``{p: g(theta)}``."""
        triples = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    check_grad(type(self).__name__, p, p.grad)
                    triples.append((p, p.grad, group["adaptive"]))
        norm = scaled_grad_norm(triples)
        saved, first_grads = [], {}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            perturb = perturbation(params, grads, rho=group["rho"], adaptive=group["adaptive"],
                                   eps=group["eps"], norm=norm)
            for p, g, e in zip(params, grads, perturb):
                saved.append((p, p.detach().clone()))
                if self.keep_first_grads:
                    first_grads[p] = g.detach().clone()
                p.add_(e)  # theta + e
        return saved, first_grads

    def _descend(self, first_grads: dict[Tensor, Tensor]) -> None:
        """The base optimizer steps with ``p.grad = g_SAM``."""
        self.base_optimizer.step()


__all__ = ["SAM", "WrapperOptimizer", "build_base_optimizer", "frozen_batchnorm_stats",
           "perturbation", "scaled_grad_norm"]
