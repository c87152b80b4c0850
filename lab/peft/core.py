"""The machinery every PEFT method shares: wrap a frozen ``nn.Linear``, add an update, fold it back.

A parameter-efficient method keeps the pretrained weight W0 ∈ ℝ^{d×k} (``out × in``) frozen and
learns a small set of extra parameters that define an update ΔW (the same shape as W0)::

    h = W0·x + b + ΔW·x            (unmerged: two matmuls, W0 never changes)
    W ← W0 + ΔW                    (merge: one matmul again, zero inference latency)

:class:`AdapterLinear` is that contract: a subclass defines only :meth:`delta_weight` (ΔW from
its own parameters and, for multiplicative methods such as HUT, from W0 read through
:meth:`original_weight`) and may override :meth:`adapter_forward` when ΔW·x is cheaper as a chain
of small matmuls (LoRA: B·(A·x), never forming ΔW). :meth:`merge` adds ΔW into the base weight
(so the merged output equals the adapted output); while merged, the adapter branch is skipped
(training while merged would count ΔW twice). Setting ``enabled = False`` switches the branch off
(IST's "response suppression" uses it).

Unmerging is exact. :meth:`merge` keeps W0 (a non-persistent buffer, one copy of the frozen
weight) and :meth:`unmerge` puts it back bit for bit. Subtracting ΔW again would not be exact in
floating point ((W0 + ΔW) − ΔW ≠ W0 when |ΔW| ≫ |W0|), and for a multiplicative update
W = W0 ⊙ (1 + S) it is not even defined where 1 + S = 0. The price is one copy of W0 per layer
while merged; unmerge frees it. A merged layer whose base weight was changed after merging is
restored to the W0 it had before merging.

:func:`apply` is the model-level entry: it freezes every parameter of a model, replaces each
``nn.Linear`` whose qualified name matches one of ``target`` (regular expressions, searched)
with the registered adapter of ``method``, and returns the number of trainable parameters.
Hugging Face GPT-2 stores its projections as ``Conv1D`` (weight ``in × out``, ``y = x·W + b``,
the transpose of ``nn.Linear``); :func:`apply` first rebuilds such a layer as the equivalent
``nn.Linear`` (weight transposed, same output), so every method works on GPT-2 as well.

Methods registered under kind ``peft``: ``lora``, ``adalora``, ``hut`` and ``loku`` are adapter
layers; ``ist`` and ``glad`` are training rules for LoRA adapters and carry ``adapter =
LoRALinear`` so that ``apply(model, "ist")`` installs the adapters they train.
"""
from __future__ import annotations

import re
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lab.checks import check_int, check_positive
from lab.registry import get


class AdapterLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a learned update ΔW (subclasses define :meth:`delta_weight`)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.merged = False
        self.enabled = True
        self.register_buffer("_unmerged_weight", None, persistent=False)   # W0 while merged

    def original_weight(self) -> torch.Tensor:  # (out, in)
        """W0, the frozen pretrained weight, whether or not the update is merged into the base."""
        return self._unmerged_weight if self.merged else self.base.weight

    def delta_weight(self) -> torch.Tensor:  # (out, in)
        """ΔW, the update folded into the base weight by :meth:`merge`."""
        raise NotImplementedError(f"{type(self).__name__} must define delta_weight()")

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        """ΔW·x; subclasses override this with a cheaper factorized product where there is one."""
        return F.linear(x, self.delta_weight())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)                                            # W0·x + b
        if self.enabled and not self.merged:
            h = h + self.adapter_forward(x)                         # + ΔW·x
        return h

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W0 + ΔW (W0 kept aside); afterwards the forward is one linear layer, same output."""
        if not self.merged:
            delta = self.delta_weight().to(self.base.weight.dtype)     # ΔW from the unmerged W0
            self._unmerged_weight = self.base.weight.detach().clone()
            self.base.weight += delta
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W0, exactly as before :meth:`merge` (undoes it)."""
        if self.merged:
            self.base.weight.copy_(self._unmerged_weight)
            self._unmerged_weight = None
            self.merged = False

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """The learned parameters (everything except the frozen base)."""
        for name, p in self.named_parameters():
            if not name.startswith("base."):
                yield p

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, merged={self.merged}"


def linear_from_conv1d(conv: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` computing the same map as a Hugging Face ``Conv1D`` (``y = x·W + b``)."""
    weight = conv.weight                                            # (in, out)
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=conv.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.T)                               # (out, in)
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D, recognized without importing transformers
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def adapter_class(method: str) -> type:
    """The adapter layer class that :func:`apply` installs for registered PEFT ``method``."""
    obj = get("peft", method)
    cls = obj if isinstance(obj, type) and issubclass(obj, AdapterLinear) else getattr(obj, "adapter", None)
    if cls is None:
        raise TypeError(f"peft method {method!r} defines no adapter layer")
    return cls


def apply(model: nn.Module, method: str = "lora", target: Sequence[str] = (".*",),
          *, rank: int = 8, alpha: float | None = None, generator: torch.Generator | None = None) -> int:
    """Freeze ``model`` and wrap each matching linear layer with ``method``'s adapter, in place.

    Args:
        model: any ``nn.Module`` (``nn.Linear`` and GPT-2 ``Conv1D`` layers are adapted).
        method: a registered PEFT name (``lora``, ``adalora``, ``hut``, ``loku``, ``ist``, ``glad``).
        target: regular expressions; a layer is adapted when one is found in its qualified name
            (e.g. ``("q_proj", "v_proj")`` or ``("attn",)``).
        rank: r, the rank of each adapter (``init_r`` for AdaLoRA).
        alpha: the scaling numerator α (default: the method's own default).
        generator: seeds the adapters' initialization.

    Returns:
        the number of trainable parameters after wrapping.
    """
    check_int("rank", rank, minimum=1)
    if alpha is not None:
        check_positive("alpha", alpha)
    if isinstance(target, str) or not all(isinstance(t, str) for t in target):
        raise TypeError("target must be a tuple of regular-expression strings")
    cls = adapter_class(method)
    patterns = [re.compile(t) for t in target]
    for p in model.parameters():
        p.requires_grad_(False)
    matches = [(name, m) for name, m in model.named_modules()
               if name and (isinstance(m, nn.Linear) or _is_conv1d(m))
               and any(pat.search(name) for pat in patterns)]
    if not matches:
        raise ValueError(f"target {tuple(target)} matches no linear layer of the model")
    extra = {} if alpha is None else {"alpha": alpha}
    for name, module in matches:
        base = linear_from_conv1d(module) if _is_conv1d(module) else module
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, cls(base, rank=rank, generator=generator, **extra))
    return trainable_count(model)


def adapters(model: nn.Module) -> dict[str, AdapterLinear]:
    """``{qualified name: adapter layer}`` of a model, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def trainable_count(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge(model: nn.Module) -> nn.Module:
    """Merge every adapter of ``model`` into its base weight (in place); returns the model."""
    for layer in adapters(model).values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge` on every adapter of ``model``."""
    for layer in adapters(model).values():
        layer.unmerge()
    return model
