"""LoKU: unlearn with LoRA started from a Fisher-weighted low-rank piece of the weight (FILA), with IHL.

Paper: "Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs", Cha et al., arXiv
2408.06621 (ICLR 2025; reference code: csm9493/efficient-llm-unlearning).

The update: two parts. The loss, the inverted hinge loss (IHL), lives in
:mod:`lab.preference.inverted_hinge` (registered as preference_loss ``inverted_hinge``) and is
reused here, not rewritten; the total objective of the released code is IHL(forget batch) +
NLL(retain batch). This module adds the initialization, FILA, for each adapted weight W ∈ ℝ^{d×k}::

    F_f = Σ_b n_b·(∂L_f/∂W)² / N_f        Fisher diagonal of W on the forget set (NLL per batch b)
    F_r = the same on the retain set
    Imp = F_f / (F_r + 1e-5)              how much more W matters to forgetting than to retaining
    w_i = sqrt(Σ_j Imp_ij)                one weight per output row
    U, S, V = rank-r truncated SVD of diag(w)·W
    S ← S / s                                        s = α/r, the LoRA scale
    A = (V·sqrt(S))ᵀ,   B = diag(1/(w + 1e-5))·U·sqrt(S)
    W_res = W − s·B·A                                the base weight is replaced by the residual

where n_b is the size of batch b, N the number of examples of the set, L_f the NLL of a forget
batch and r the LoRA rank. Intuition: the adapted model computes exactly what the original
computed, while the adapter starts on the directions of W that carry the forget set (a weighted
low-rank approximation), so unlearning moves those first.

Where it departs from LoRA: B ≠ 0 at init and the *base weight changes* (save the merged model,
not only the adapter).

Choices:
- The exact SVD, keeping the top r triplets, where the released code calls the randomized
  ``torch.svd_lowrank(·, q=r)``: deterministic, and exactly the truncation the randomized routine
  approximates (at q = r the approximation can be loose on small matrices).
- Fisher and importance inputs must be finite and non-negative, of the weight's shape, and the
  rank at most min(d, k) (``ValueError``).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from lab.peft.core import adapters
from lab.peft.lora import LoRALinear
from lab.registry import register
from lab.preference.inverted_hinge import inverted_hinge

__all__ = ["FILALinear", "fisher_diagonal", "fila_init", "fila_initialize", "inverted_hinge"]


@register("peft", "loku", paper="Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs",
          arxiv="2408.06621")
class FILALinear(LoRALinear):
    """A LoRA layer that :func:`fila_init` can start from a Fisher-weighted low-rank factorization."""

    def fila_init(self, fisher_forget: torch.Tensor, fisher_retain: torch.Tensor) -> None:
        """Apply FILA with Fisher diagonals (d, k) of this layer's weight; output is unchanged."""
        fila_init(self, fisher_forget, fisher_retain)


def fisher_diagonal(model: nn.Module, weights: Iterable[nn.Parameter],
                    batches: Iterable, loss_fn: Callable[[nn.Module, object], torch.Tensor]) -> list[torch.Tensor]:
    """F = Σ_b n_b·(∂L_b/∂W)² / N for each W in ``weights``; ``batches`` yield objects with ``len``."""
    weights = list(weights)
    sums = [torch.zeros_like(w) for w in weights]
    total = 0
    for batch in batches:
        n = len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)
        loss = loss_fn(model, batch)
        grads = torch.autograd.grad(loss, weights)
        for s, g in zip(sums, grads):
            s.add_(n * g.detach() ** 2)                         # n_b·(∂L_b/∂W)²
        total += n
    if total == 0:
        raise ValueError("batches must not be empty")
    return [s / total for s in sums]


@torch.no_grad()
def fila_init(layer: LoRALinear, fisher_forget: torch.Tensor, fisher_retain: torch.Tensor) -> None:
    """Set A, B from the Fisher-weighted rank-r SVD of W and replace W by W − s·B·A (in place)."""
    w0 = layer.base.weight                                                     # (d, k)
    for name, f in (("fisher_forget", fisher_forget), ("fisher_retain", fisher_retain)):
        if not isinstance(f, torch.Tensor) or f.shape != w0.shape:
            raise ValueError(f"{name} must be a tensor of shape {tuple(w0.shape)}")
        if (f < 0).any() or not torch.isfinite(f).all():
            raise ValueError(f"{name} must be finite and >= 0")
    r, s = layer.rank, layer.scaling
    if r > min(w0.shape):
        raise ValueError(f"rank {r} exceeds min(d, k) = {min(w0.shape)}")
    imp = fisher_forget / (fisher_retain + 1e-5)                               # Imp = F_f/(F_r+ε)
    row_w = imp.sum(1).sqrt()                                                  # w_i, (d,)
    u, sv, vh = torch.linalg.svd(row_w[:, None] * w0.float(), full_matrices=False)
    u, sv, v = u[:, :r], sv[:r], vh[:r].T                                      # (d,r), (r,), (k,r)
    sv = sv / s                                                                # S ← S/s
    root = sv.sqrt()
    layer.lora_A.copy_((v * root).T.to(w0.dtype))                              # A = (V√S)ᵀ, (r, k)
    layer.lora_B.copy_(((u * root) / (row_w[:, None] + 1e-5)).to(w0.dtype))   # B = diag(1/(w+ε))U√S
    w0 -= s * (layer.lora_B @ layer.lora_A)                                    # W_res = W − s·B·A


def fila_initialize(model: nn.Module, forget_batches: Iterable, retain_batches: Iterable,
                    loss_fn: Callable[[nn.Module, object], torch.Tensor]) -> None:
    """FILA on every LoRA layer of ``model`` (after ``lab.peft.apply(model, "loku")``)."""
    layers = [m for m in adapters(model).values() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError("model has no LoRA layers; call lab.peft.apply(model, 'loku') first")
    weights = [m.base.weight for m in layers]
    for w in weights:
        w.requires_grad_(True)
    try:
        f_forget = fisher_diagonal(model, weights, list(forget_batches), loss_fn)
        f_retain = fisher_diagonal(model, weights, list(retain_batches), loss_fn)
    finally:
        for w in weights:
            w.requires_grad_(False)
    for m, ff, fr in zip(layers, f_forget, f_retain):
        fila_init(m, ff, fr)
