"""Pieces shared by the lab's optimizers: one home for state, sparse checks, decay, bias correction.

Every optimizer's ``step`` reads the same way::

    loss = evaluate(closure)
    for group in self.param_groups:
        params, grads, states = gather(self, group, init=lambda p: {"exp_avg": zeros(p)})
        steps = advance_steps(states)                 # t, per parameter (python floats)
        if group["maximize"]: grads = negate(grads, foreach)
        decoupled_weight_decay(params, lr, wd, foreach)   # theta <- theta (1 - lr wd)
        ... the algorithm's own update, one loop per tensor or one torch._foreach_* call ...

- :func:`gather` skips parameters whose ``grad is None`` (no state, no decay), raises
  :class:`SparseGradientError` for sparse gradients, and creates the state lazily the first time a
  parameter is seen: ``state["step"]`` (a float32 scalar tensor, as in ``torch.optim``) plus the
  tensors the optimizer asks for.
- :func:`by_device_dtype` splits parallel tensor lists into groups sharing a device and a dtype,
  the unit a ``torch._foreach_*`` call works on.
- :func:`by_step` does the same and also splits by step count, so that per-step scalars are one
  number per bucket. On the CPU both cut buckets into cache-sized chunks (:data:`CPU_CHUNK_NUMEL`).
- :func:`bias_correction` is ``1 - beta**t``.
- :func:`decoupled_weight_decay` is ``theta <- theta (1 - lr lambda)`` (AdamW order: on theta_{t-1},
  before the update); :func:`coupled_weight_decay` returns ``g + lambda theta`` (L2, new tensors,
  ``p.grad`` is left untouched).
- :func:`use_foreach` resolves the ``foreach`` flag: ``None`` means the fast path.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

StateInit = Callable[[Tensor], dict[str, Tensor]]


class SparseGradientError(RuntimeError):
    """Raised when an optimizer that has no sparse update meets a sparse gradient."""


def zeros(p: Tensor) -> Tensor:
    """A zero tensor shaped and laid out like ``p`` (the usual initial moment)."""
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def reject_sparse(optimizer: str, grad: Tensor) -> None:
    """Raise :class:`SparseGradientError` naming ``optimizer`` if ``grad`` is sparse."""
    if grad.is_sparse:
        raise SparseGradientError(
            f"{optimizer} does not support sparse gradients; use a dense embedding "
            f"(nn.Embedding(sparse=False)) or torch.optim.SGD / torch.optim.SparseAdam")


def gather(optimizer: torch.optim.Optimizer, group: dict, init: StateInit | None = None,
           ) -> tuple[list[Tensor], list[Tensor], list[dict]]:
    """``(params, grads, states)`` of the parameters of ``group`` that have a gradient.

    A parameter seen for the first time gets ``state["step"] = tensor(0.)`` and the tensors
    returned by ``init(p)`` (e.g. ``{"exp_avg": zeros(p)}``).
    """
    name = type(optimizer).__name__
    params, grads, states = [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        reject_sparse(name, p.grad)
        state = optimizer.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device="cpu")  # as torch.optim
            if init is not None:
                state.update(init(p))
        params.append(p)
        grads.append(p.grad)
        states.append(state)
    return params, grads, states


def advance_steps(states: Sequence[dict]) -> list[float]:
    """Increment ``state["step"]`` of every parameter; return the new counts t (t = 1 first)."""
    steps = []
    for state in states:
        state["step"] += 1
        steps.append(state["step"].item())
    return steps


def prepare(optimizer: torch.optim.Optimizer, group: dict, init: StateInit | None = None,
            ) -> tuple[list[Tensor], list[Tensor], list[dict], list[float], bool] | None:
    """The shell every elementwise ``step`` starts a group with, in one place.

    Gathers the parameters that have a gradient (:func:`gather`), advances their step counts,
    picks the foreach path (:func:`use_foreach`) and negates the gradients when the group
    maximizes. Returns ``(params, grads, states, steps, foreach)``, or None when no parameter of
    the group has a gradient.
    """
    params, grads, states = gather(optimizer, group, init)
    if not params:
        return None
    steps = advance_steps(states)
    foreach = use_foreach(group["foreach"], params)
    if group["maximize"]:
        grads = negate(grads, foreach)
    return params, grads, states, steps, foreach


def bias_correction(beta: float, step: float) -> float:
    """``1 - beta**t``: the mass an EMA started at zero has collected after t steps."""
    return 1.0 - beta ** step


def use_foreach(foreach: bool | None, tensors: Sequence[Tensor] = ()) -> bool:
    """``foreach=None`` -> True (the fast path), unless a tensor is sparse or not strided."""
    if foreach is not None:
        return bool(foreach)
    return all(t.layout == torch.strided for t in tensors)


CPU_CHUNK_NUMEL = 1 << 18
"""Largest number of elements in one CPU foreach bucket (1 MiB of float32).

On the CPU a ``torch._foreach_*`` op runs its kernel tensor after tensor, so a chain of foreach ops
over a whole 32 MB parameter list streams every intermediate through main memory. Buckets of at
most this many elements keep a chain's intermediates in cache (measured in
``benchmarks/optim_step.py``: AdaBelief's foreach chain ran ~1.6x faster in chunks; a larger
tensor is a chunk of its own). GPU buckets
are not split: there each op is one multi-tensor kernel launch.
"""


def _buckets(keys: Sequence, tensorlists: Sequence[Sequence[Tensor]]) -> list[tuple]:
    """Group index i by ``keys[i]``, keep order, split CPU groups into cache-sized chunks."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    out = []
    for key, indices in groups.items():
        chunk, numel = [], 0
        first = tensorlists[0]
        for i in indices:
            n = first[i].numel()
            if chunk and first[i].device.type == "cpu" and numel + n > CPU_CHUNK_NUMEL:
                out.append((key, chunk))
                chunk, numel = [], 0
            chunk.append(i)
            numel += n
        out.append((key, chunk))
    return [(key, tuple([tensors[i] for i in chunk] for tensors in tensorlists))
            for key, chunk in out]


def by_device_dtype(*tensorlists: Sequence[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Split parallel lists into sublists whose first-list tensors share device and dtype.

    ``by_device_dtype(params, grads, exp_avgs)`` -> ``[(params_a, grads_a, exp_avgs_a), ...]``,
    order preserved inside each group; CPU groups are cut into chunks of at most
    :data:`CPU_CHUNK_NUMEL` elements (a single larger tensor is its own chunk).
    """
    if not tensorlists:
        return []
    keys = [(t.device, t.dtype) for t in tensorlists[0]]
    return [lists for _, lists in _buckets(keys, tensorlists)]


def by_step(steps: Sequence[float], *tensorlists: Sequence[Tensor],
            ) -> list[tuple[float, tuple[list[Tensor], ...]]]:
    """Split parallel lists into ``(t, sublists)`` buckets sharing step count, device and dtype.

    Inside a bucket every per-step scalar (bias corrections, step sizes) is one number, so a
    ``torch._foreach_*`` call with a single scalar covers the bucket. CPU buckets are cut into
    cache-sized chunks as in :func:`by_device_dtype`.
    """
    keys = [(t, x.device, x.dtype) for t, x in zip(steps, tensorlists[0])]
    return [(key[0], lists) for key, lists in _buckets(keys, tensorlists)]


def negate(grads: list[Tensor], foreach: bool) -> list[Tensor]:
    """``-g`` as new tensors (for ``maximize=True``); the stored gradients are not changed."""
    if foreach:
        return list(torch._foreach_neg(grads))
    return [-g for g in grads]


def decoupled_weight_decay(params: list[Tensor], lr: float, weight_decay: float, foreach: bool,
                           ) -> None:
    """``theta <- theta (1 - lr lambda)`` in place (AdamW/Lion order: before the update)."""
    if weight_decay == 0 or not params:
        return
    factor = 1.0 - lr * weight_decay
    if foreach:
        torch._foreach_mul_(params, factor)
    else:
        for p in params:
            p.mul_(factor)


def coupled_weight_decay(grads: list[Tensor], params: list[Tensor], weight_decay: float,
                         foreach: bool) -> list[Tensor]:
    """``g + lambda theta`` (L2 regularization folded into the gradient), as new tensors."""
    if weight_decay == 0 or not params:
        return grads
    if foreach:
        return list(torch._foreach_add(grads, params, alpha=weight_decay))
    return [g.add(p, alpha=weight_decay) for g, p in zip(grads, params)]


def evaluate(closure: Callable[[], Tensor] | None) -> Tensor | None:
    """Call ``closure`` with gradients enabled (the optimizer's ``step`` runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


__all__ = [
    "SparseGradientError", "StateInit", "zeros", "reject_sparse", "gather", "advance_steps",
    "bias_correction", "use_foreach", "by_device_dtype", "by_step", "CPU_CHUNK_NUMEL", "negate",
    "decoupled_weight_decay", "coupled_weight_decay", "evaluate",
]
