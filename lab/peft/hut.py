"""HUT: fine-tune by transforming the pretrained weight elementwise instead of adding to it.

Paper: "HUT: A More Computation Efficient Fine-Tuning Method With Hadamard Updated Transformation",
Zhang et al., arXiv 2409.13501 (no code surveyed).

The update: the paper's "updated transformation" (UT) view builds the new weight as a function of
the old one, W = T(W0), rather than W0 + ΔW with ΔW unrelated to W0; HUT's transformation is a
Hadamard (elementwise) product with two low-rank matrices, and it can be merged (no inference
latency). The exact formula, initialization and scale were not available to the lab
([unverified]); the lab's reading, stated so it can be checked, is::

    W = W0 ⊙ (1 + s·B·A)          A ∈ ℝ^{r×k}, B ∈ ℝ^{d×r}, 1 the all-ones d×k matrix, s = α/r
      = W0 + s·W0 ⊙ (B·A)         ⇒  ΔW = s·W0 ⊙ (B·A),   h = W0·x + ΔW·x

where W0 ∈ ℝ^{d×k} is the frozen weight, r = ``rank``, α = ``alpha``, ⊙ the elementwise product.
Intuition: each entry of W0 is rescaled by its own factor 1 + s·(BA)_ij: the update is proportional
to the pretrained weight, so entries that were zero stay zero and large weights move most (the
correlation between old and new weights that UT asks for). The transformation matrix BA has rank
≤ r, but ΔW = W0 ⊙ (sBA) generally has full rank (rank(X ⊙ Y) ≤ rank X · rank Y), which is where
the extra expressiveness over LoRA comes from at the same r·(d + k) parameters.

Where it departs from LoRA: a multiplicative (W0 ⊙ ·) instead of an additive update. This is not
LoHA (ΔW = (B₁A₁) ⊙ (B₂A₂), two independent low-rank factors and no W0).

Choices:
- The formula above (the lab's reading, [unverified]).
- Initialization as LoRA (A Kaiming-uniform, B = 0), so the model is unchanged at init.
- Defaults r = 8, α = 8 (the lab's choice, as LoRA).
- ΔW is always computed from W0 (:meth:`~lab.peft.core.AdapterLinear.original_weight`), also while
  merged; unmerging puts W0 back exactly (recomputing ΔW from the merged weight would leave
  W0 ⊙ (1 − (sBA)²)).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lab.checks import check_int, check_positive
from lab.peft.core import AdapterLinear
from lab.registry import register


@register("peft", "hut", paper="HUT: A More Computation Efficient Fine-Tuning Method With Hadamard "
          "Updated Transformation", arxiv="2409.13501")
class HUTLinear(AdapterLinear):
    """``W = W0 ⊙ (1 + (α/r)·B·A)``, B = 0 at init (the lab's reading of HUT, see module docstring).

    Args:
        base: the frozen ``nn.Linear``.
        rank: r of the transformation factors.
        alpha: α; the transformation is scaled by α/r.
        generator: seeds A's initialization.
    """

    def __init__(self, base: nn.Linear, *, rank: int = 8, alpha: float = 8.0,
                 generator: torch.Generator | None = None):
        super().__init__(base)
        self.rank = check_int("rank", rank, minimum=1)
        self.alpha = check_positive("alpha", alpha)
        self.scaling = self.alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device))
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)

    def transformation(self) -> torch.Tensor:  # (d, k)
        """The elementwise factor 1 + s·B·A that maps W0 to W."""
        return 1.0 + self.scaling * (self.lora_B @ self.lora_A)

    def delta_weight(self) -> torch.Tensor:  # (d, k)
        # ΔW = W0 ⊙ (s·B·A), with W0 the pretrained weight even while merged
        return self.original_weight() * (self.scaling * (self.lora_B @ self.lora_A))
