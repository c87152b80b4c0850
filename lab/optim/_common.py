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
  :class:`SparseGradientError` for sparse gradients and ``TypeError`` for complex parameters
  (:func:`check_grad`), and creates the state lazily the first time a parameter is seen:
  ``state["step"]`` (a float32 scalar tensor, as in ``torch.optim``) plus the tensors the
  optimizer asks for.
- :func:`check_finite` raises ``ValueError`` naming the parameter when a gradient holds NaN or
  Inf, before anything is updated (see its docstring for the cost and the opt-out
  ``check_finite=False``).
- :func:`prepare` is the shell of every elementwise step: gather, check, then either the eager
  path (step counts advanced here as Python floats, ``maximize`` applied, foreach resolved) or the
  fused path (:mod:`lab.optim._fused`: the compiled update advances the step tensors itself).
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

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from lab.optim._fused import use_fused

StateInit = Callable[[Tensor], dict[str, Tensor]]


class SparseGradientError(RuntimeError):
    """Raised when an optimizer that has no sparse update meets a sparse gradient."""


class NonFiniteGradientError(ValueError):
    """Raised by :func:`check_finite`: a gradient holds NaN or Inf (names the parameter)."""


def zeros(p: Tensor) -> Tensor:
    """A zero tensor shaped and laid out like ``p`` (the usual initial moment)."""
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def reject_sparse(optimizer: str, grad: Tensor) -> None:
    """Raise :class:`SparseGradientError` naming ``optimizer`` if ``grad`` is sparse."""
    if grad.is_sparse:
        raise SparseGradientError(
            f"{optimizer} does not support sparse gradients; use a dense embedding "
            f"(nn.Embedding(sparse=False)) or torch.optim.SGD / torch.optim.SparseAdam")


def check_grad(optimizer: str, param: Tensor, grad: Tensor) -> None:
    """Sparse gradients raise :class:`SparseGradientError`, complex parameters ``TypeError``.

    The lab's optimizers are written for real tensors: their second moments square ``g``
    (``g * g`` is not ``|g|^2`` for a complex g), and sign-based updates have no complex sign.
    Rather than give silently wrong numbers, they reject complex parameters; wrap a complex
    parameter as ``torch.view_as_real`` (two real coordinates per entry) to optimize it.
    """
    reject_sparse(optimizer, grad)
    if param.is_complex() or grad.is_complex():
        raise TypeError(f"{optimizer} does not support complex parameters (got {param.dtype}, shape "
                        f"{tuple(param.shape)}); optimize torch.view_as_real(param) instead")


def check_finite(optimizer: torch.optim.Optimizer, group: dict, params: Sequence[Tensor],
                 grads: Sequence[Tensor]) -> None:
    """Raise :class:`NonFiniteGradientError` (a ``ValueError``) if a gradient holds NaN or Inf.

    One reduction per gradient and one host sync per step: the sum of every gradient (NaN or
    +-Inf when any entry is; a plain sum is the cheapest vectorised read of a tensor, measured
    ~20% faster than ``torch._foreach_norm`` on the CPU) and a single ``isfinite().all()`` on
    the stacked sums. It runs before the update, so when
    it raises nothing has changed: parameters, state and step counts are as before the call, and
    the caller may skip the batch (``zero_grad()``) and go on. Without it a NaN passes silently
    through sign-based updates (``sign(NaN) = 0`` freezes the coordinate's momentum at NaN for
    ever in Lion, Lion-kappa and Signum) and kills SVD-based projectors.

    The message names the parameter: its name when the optimizer was built from
    ``model.named_parameters()`` (torch keeps them in ``group["param_names"]``), else its param
    group, index and shape. A finite gradient whose sum overflows (entries near the dtype's
    max) is recognised by an exact per-tensor check, so it does not raise.

    Cost: one read of every gradient (measured in ``benchmarks/optim_step.py``): about 1 ms per
    8M float32 parameters on one CPU thread, 2% of a forward-backward-step of an MLP holding
    them, but 5-40% of the optimizer step alone (an elementwise step moves 3-9 tensors' bytes, the
    check one more). It is a separate pass by design: raising before anything changes needs the
    answer before the update writes, and inductor's CPU code cannot put a whole-tensor reduction
    in the same loop as the update. Opt out per param group with ``check_finite=False`` (a
    constructor argument of every lab optimizer).
    """
    if not group.get("check_finite", True) or not grads:
        return
    sums = [g.sum() for g in grads]
    if len(sums) == 1:
        finite = bool(torch.isfinite(sums[0]))
    else:
        finite = bool(torch.stack(sums).isfinite().all())
    if finite:
        return
    for p, g, n in zip(params, grads, sums):
        if not torch.isfinite(n) and not bool(torch.isfinite(g).all()):
            raise NonFiniteGradientError(
                f"{type(optimizer).__name__}: the gradient of {describe(optimizer, p)} holds NaN or "
                f"Inf; nothing was updated. Skip this batch (zero_grad) or find its cause; "
                f"check_finite=False disables this check")


def describe(optimizer: torch.optim.Optimizer, param: Tensor) -> str:
    """``parameter 'fc.weight'`` or ``parameter 2 of param group 0 (shape (4, 3))``."""
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if p is param:
                names = group.get("param_names")
                if names:
                    return f"parameter {names[pi]!r} (shape {tuple(p.shape)})"
                return f"parameter {pi} of param group {gi} (shape {tuple(p.shape)})"
    return f"a parameter of shape {tuple(param.shape)}"


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
        check_grad(name, p, p.grad)
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


class Prepared(NamedTuple):
    """What :func:`prepare` hands to an optimizer's step for one param group."""

    params: list[Tensor]
    grads: list[Tensor]     # negated (new tensors) on the eager path when the group maximizes
    states: list[dict]
    steps: list[float]      # t per parameter, advanced (eager); empty on the fused path
    foreach: bool
    fused: bool             # True: call the compiled update, which advances the step tensors


def prepare(optimizer: torch.optim.Optimizer, group: dict, init: StateInit | None = None,
            ) -> Prepared | None:
    """The shell every elementwise ``step`` starts a group with, in one place.

    Gathers the parameters that have a gradient (:func:`gather`) and checks that the gradients
    are finite (:func:`check_finite`). On the eager path it then advances the step counts, picks
    the foreach path (:func:`use_foreach`) and negates the gradients when the group maximizes; on
    the fused path (``group["fused"]``) it leaves those to the compiled update. Returns None when
    no parameter of the group has a gradient.
    """
    params, grads, states = gather(optimizer, group, init)
    if not params:
        return None
    check_finite(optimizer, group, params, grads)
    if group.get("fused"):
        return Prepared(params, grads, states, [], False, True)
    steps = advance_steps(states)
    foreach = use_foreach(group["foreach"], params)
    if group["maximize"]:
        grads = negate(grads, foreach)
    return Prepared(params, grads, states, steps, foreach, False)


def bias_correction(beta: float, step: float) -> float:
    """``1 - beta**t``: the mass an EMA started at zero has collected after t steps."""
    return 1.0 - beta ** step


def path_options(owner: str, *, foreach: bool | None, fused: bool | None, check_finite: bool,
                 ) -> dict:
    """The three switches every elementwise optimizer takes, validated, as ``defaults`` entries.

    ``foreach`` (eager ``torch._foreach_*`` path, None = yes), ``fused`` (the compiled update of
    :mod:`lab.optim._fused`, None = no, as in torch.optim) and ``check_finite`` (raise on a NaN/Inf
    gradient, :func:`check_finite`).
    """
    use_fused(fused, foreach, owner)
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
    return dict(foreach=foreach, fused=fused, check_finite=check_finite)


PATH_KEYS = ("foreach", "fused", "check_finite")


def keep_path_options(optimizer: torch.optim.Optimizer) -> None:
    """Make ``load_state_dict`` keep this optimizer's ``foreach``/``fused``/``check_finite``.

    ``Optimizer.load_state_dict`` copies every group entry from the checkpoint, so an eager
    checkpoint would silently turn a fused optimizer eager (and back). How a step is computed is
    a property of the optimizer, not of the saved state: the checkpoint's values are replaced by
    the current ones before loading (a pre-hook).
    """
    def hook(opt: torch.optim.Optimizer, state_dict: dict) -> dict:
        state_dict = dict(state_dict)
        groups = []
        for saved, current in zip(state_dict["param_groups"], opt.param_groups):
            saved = dict(saved)
            for key in PATH_KEYS:
                if key in current:
                    saved[key] = current[key]
            groups.append(saved)
        state_dict["param_groups"] = groups
        return state_dict

    optimizer.register_load_state_dict_pre_hook(hook)


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
    "SparseGradientError", "NonFiniteGradientError", "StateInit", "zeros", "reject_sparse",
    "check_grad", "check_finite", "describe", "gather", "advance_steps", "prepare", "Prepared",
    "path_options", "keep_path_options", "PATH_KEYS",
    "bias_correction", "use_foreach", "by_device_dtype", "by_step", "CPU_CHUNK_NUMEL", "negate",
    "decoupled_weight_decay", "coupled_weight_decay", "evaluate",
]
