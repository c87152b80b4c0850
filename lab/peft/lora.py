"""LoRA: learn a low-rank increment B·A beside a frozen weight.

Paper: "LoRA: Low-Rank Adaptation of Large Language Models", Hu et al., arXiv 2106.09685
(reference code: microsoft/LoRA; peer: ``peft`` LoraConfig). The catalog lists it as the baseline
of "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning" (AdaLoRA).

The update: for a frozen W0 ∈ ℝ^{d×k} (d outputs, k inputs) with bias b, LoRA learns
A ∈ ℝ^{r×k} and B ∈ ℝ^{d×r}, r ≪ d, k::

    h = W0·x + b + s·B·(A·dropout(x))        s = α / r   (rsLoRA: s = α / √r)
    merge:  W = W0 + s·B·A                    unmerge: W ← W0 (kept, see Choices)

where x is the layer input, r = ``rank``, α = ``alpha`` and s the scale. Intuition: the change
fine-tuning needs has low "intrinsic rank", so a rank-r increment captures most of it at a
fraction of the parameters and optimizer state: r·(d + k) trainable parameters per matrix instead
of d·k.

Where it departs from LoRA: it is the parent — of AdaLoRA (``adalora``, SVD-shaped with a moving
rank budget), HUT (``hut``, a multiplicative update), LoKU's FILA start (``loku``), and the layers
that IST (``ist``) and GLAD (``glad``) train.

Choices:
- A starts Kaiming-uniform (a = √5, as ``nn.Linear``: bound 1/√k), B starts at zero, so at
  initialization the adapted model computes exactly what the base model computes; the first
  gradient reaches B only.
- Dropout acts on the LoRA branch's input only, never on the base path.
- Defaults: r = 8, α = 8 (``peft`` LoraConfig), dropout 0.
- Merge keeps W0 (a non-persistent buffer) and unmerge puts it back bit for bit, instead of
  subtracting s·B·A again, which is not exact in floating point (:class:`lab.peft.core.AdapterLinear`);
  merging twice does not count the update twice, and a merged layer skips the branch.
- The branch is computed as ``s·B·(A·x)``, never forming the d×k matrix.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lab.checks import check_int, check_positive, check_range
from lab.peft.core import AdapterLinear
from lab.registry import register


@register("peft", "lora", paper="LoRA: Low-Rank Adaptation of Large Language Models", arxiv="2106.09685")
class LoRALinear(AdapterLinear):
    """``h = W0·x + (α/r)·B·A·x`` with A Kaiming-uniform and B = 0 at init.

    Args:
        base: the frozen ``nn.Linear``.
        rank: r.
        alpha: α; the branch is scaled by α/r (α/√r with ``rslora``).
        dropout: dropout probability on the LoRA branch's input.
        rslora: use the rank-stabilized scale α/√r.
        generator: seeds A's initialization.
    """

    def __init__(self, base: nn.Linear, *, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0,
                 rslora: bool = False, generator: torch.Generator | None = None):
        super().__init__(base)
        self.rank = check_int("rank", rank, minimum=1)
        self.alpha = check_positive("alpha", alpha)
        check_range("dropout", dropout, 0.0, 1.0, hi_open=True)
        self.scaling = self.alpha / (math.sqrt(rank) if rslora else rank)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device))
        # Kaiming-uniform with a = √5, as nn.Linear: bound = 1/√k
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:  # (d, k)
        # ΔW = s·B·A
        return self.scaling * (self.lora_B @ self.lora_A)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        # s·B·(A·dropout(x)), never forming the d×k matrix
        return self.scaling * ((self.dropout(x) @ self.lora_A.T) @ self.lora_B.T)   # (..., d)
