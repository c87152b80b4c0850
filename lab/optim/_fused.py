"""The fused path: an optimizer's whole elementwise update as one ``torch.compile`` region.

``fused=True`` (the name ``torch.optim.AdamW`` uses for the same idea) runs a step of an
elementwise optimizer as one compiled function per device/dtype bucket of a param group, instead
of the eager chain of ``torch._foreach_*`` calls. Inductor fuses the chain into one pass over
memory per tensor (a C++ loop on the CPU, a Triton kernel on CUDA), so each step reads and writes
every tensor once, as torch's own fused AdamW does.

How a fused step stays compiled once:

- Every number that may change between steps enters as a tensor: the step counts are the
  per-parameter ``state["step"]`` tensors (float32, on the parameter's device, as torch's fused
  and capturable optimizers keep them), advanced inside the graph; lr, weight decay, betas and the
  other hyperparameters are 0-d float64 tensors (:func:`scalars`), so a scheduler that changes lr
  or betas every step does not recompile. Bias corrections are computed from the step tensors in
  float64 (``1 - beta ** t``), the same numbers the eager path computes from Python floats.
- Booleans (``amsgrad``, ``nesterov``, ``maximize``...) are compile-time constants: changing one
  compiles a new graph for that setting, once.
- Each optimizer instance compiles a private copy of the update function per bucket
  (:func:`compiled`): dynamo's recompile limit (8 graphs per code object) is then never reached by
  many optimizers or buckets sharing a process, and a bucket's graph is specialised to its shapes.
  The set of parameters with a gradient is part of the bucket: a parameter that gets its first
  gradient later adds a graph once.
- ``fullgraph=True``: a graph break is an error, not a silent slowdown.

Compile time is paid on the first step of each bucket (seconds to a minute on a CPU, depending on
the number of tensors); :func:`compile_seconds` reports what an optimizer has spent so far. The
compiled code needs a C++ compiler on the CPU (gcc or clang) and Triton on CUDA. The inductor
cache on disk makes the next process's compile of the same graph much faster.

The eager path stays the readable definition; each optimizer's fused function sits beside it,
written with the same ``torch._foreach_*`` calls and the per-tensor step counts as tensors, and
is tested against it (float32 <= 1e-6 relative, float64 <= 1e-12).
"""
from __future__ import annotations

import time
import types
import weakref
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def use_fused(fused: bool | None, foreach: bool | None, owner: str) -> bool:
    """``fused=None`` -> False (the eager path, as torch.optim); fused and foreach both True is an error."""
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"fused must be True, False or None, got {type(fused).__name__}")
    if fused and foreach:
        raise ValueError(f"{owner}: fused=True and foreach=True cannot be set together "
                         f"(fused runs its own compiled update)")
    return bool(fused)


def _private_copy(fn: Callable) -> Callable:
    """A function with its own code object (dynamo keeps its graphs per code object)."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)


def compiled(owner: Any, fn: Callable, key: Any, options: dict | None = None) -> Callable:
    """``torch.compile(fn, fullgraph=True)`` compiled once per ``(owner, fn, key)``.

    ``owner`` is the optimizer (the cache lives as long as it does); ``key`` names the bucket
    (param group index, device, dtype). ``options``: inductor settings for this function only
    (e.g. :data:`CAT_BUFFERS`). The first call of each entry is timed into :func:`compile_seconds`.
    """
    entries = _CACHE.setdefault(owner, {})
    entry = entries.get((fn, key))
    if entry is None:
        entry = {"fn": torch.compile(_private_copy(fn), fullgraph=True, dynamic=False,
                                     options=options),
                 "seconds": None}
        entries[(fn, key)] = entry
    if entry["seconds"] is not None:
        return entry["fn"]

    def first_call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = entry["fn"](*args, **kwargs)
        entry["seconds"] = time.perf_counter() - start
        return out

    return first_call


def compile_seconds(optimizer: Any) -> float:
    """Wall time of the first (compiling) calls of ``optimizer``'s fused buckets, summed."""
    return sum(e["seconds"] or 0.0 for e in _CACHE.get(optimizer, {}).values())


def scalars(device: torch.device, **values: float) -> dict[str, Tensor]:
    """0-d float64 tensors on ``device``: hyperparameters enter the graph as data, not constants."""
    return {name: torch.tensor(float(v), dtype=torch.float64, device=device)
            for name, v in values.items()}


def step_tensors(states: Sequence[dict], device: torch.device) -> list[Tensor]:
    """The ``state["step"]`` tensors of a bucket, moved to ``device`` as float32 if needed.

    An eager optimizer's state keeps the step on the CPU; the fused path keeps it on the
    parameter's device (torch's ``load_state_dict`` does the same for groups with ``fused``).
    """
    steps = []
    for state in states:
        step = state["step"]
        if step.device != device or step.dtype != torch.float32:
            step = state["step"] = step.to(device=device, dtype=torch.float32)
        steps.append(step)
    return steps


CAT_BUFFERS = {"max_pointwise_cat_inputs": 0}
"""Inductor options that make every ``torch.cat`` in the graph a buffer of its own (by default a
cat of up to 8 inputs is inlined into the loops that read it): used to compute small per-row
coefficients once instead of once per vector of the update loop (AdamP/SGDP)."""


def run(optimizer: Any, group_index: int, fn: Callable, lists: Sequence[list[Tensor] | None],
        states: Sequence[dict], hyper: dict[str, float], *, options: dict | None = None,
        **flags: Any) -> None:
    """Call the compiled ``fn(*lists, steps, **hyper, **flags)`` once per device/dtype bucket.

    ``lists`` are parallel per-parameter lists (``lists[0]`` the parameters; an entry may be None
    for an optional state list, e.g. ``max_exp_avg_sq`` without amsgrad); ``hyper`` the group's
    numbers (passed as 0-d float64 tensors); ``flags`` compile-time constants (booleans, names).
    Buckets are not cut into chunks: a compiled update makes one pass per tensor already.
    """
    buckets: dict[tuple, list[int]] = {}
    for i, p in enumerate(lists[0]):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    for (device, dtype), idx in buckets.items():
        sub = [None if lst is None else [lst[i] for i in idx] for lst in lists]
        steps = step_tensors([states[i] for i in idx], device)
        key = (group_index, device, dtype, tuple(sorted(flags.items())))
        compiled(optimizer, fn, key, options)(*sub, steps, **scalars(device, **hyper), **flags)


def per_tensor(values: list[Tensor]) -> list[Tensor]:
    """Per-tensor scalars (bias corrections, step sizes) computed once, not once per element.

    Inductor inlines a 0-d computation into every elementwise loop that reads it, so a
    ``beta ** t`` feeding the update of a 262,144-element tensor would be evaluated 16,384
    times (once per vector of 16): slower than the update itself. Stacking the scalars makes
    inductor write them to one small buffer first, which the loops then only read.
    """
    return list(torch.stack(values).unbind(0))


def lerp(starts: list[Tensor], ends: list[Tensor], weight: Tensor) -> list[Tensor]:
    """``start + weight (end - start)`` per tensor, out of place, with a 0-d tensor ``weight``.

    Inside a compiled graph, ``torch._foreach_lerp(starts, ends, weight)`` (out of place, one
    scalar tensor) rounds the weight to float32 in torch 2.13's inductor, so a float64 update
    would drift by ~1e-8; the per-tensor ``torch.lerp`` keeps float64.
    """
    return [torch.lerp(s, e, weight) for s, e in zip(starts, ends)]


def bias_corrections(beta: Tensor, steps: list[Tensor]) -> list[Tensor]:
    """``1 - beta ** t`` per tensor, in float64 (inside a compiled graph)."""
    return [1 - beta ** t.to(torch.float64) for t in steps]


__all__ = ["CAT_BUFFERS", "use_fused", "compiled", "compile_seconds", "scalars", "step_tensors", "run",
           "bias_corrections", "lerp", "per_tensor"]
