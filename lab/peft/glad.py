"""GLAD: LoRA whose gradient is steered by a sharpness-aware (SAM) reference gradient.

Paper: "GLAD: Generalizable Tuning for Vision-Language Models", Peng et al., arXiv 2507.13089 (no
public code when surveyed).

The update: GLAD (Generalizable LoRA tuning with RegulArized graDient) shows that plain LoRA is a
strong few-shot tuner and curbs its overfitting with a gradient-based regulariser that "uses the
gradient computed via Sharpness-Aware Minimization as a reference signal to steer the original
gradient". The paper's exact combination rule and coefficients were not available to the lab
([unverified]); the lab's rule, stated so it can be checked::

    g     = ∇L(θ)                                  the original gradient (LoRA parameters θ)
    ε     = ρ·g/‖g‖                                SAM's ascent step
    g_sam = ∇L(θ + ε)                              the reference gradient
    ĝ     = g + λ·(g_sam − g)                      the steered gradient handed to the optimizer

where L is the training loss, ρ = ``rho`` the ascent radius and λ = ``lam``. Intuition: to first
order g_sam − g ≈ ρ·H·g/‖g‖ = ρ·∇‖∇L‖ (H the Hessian), so ĝ ≈ ∇(L + λρ·‖∇L‖): descending ĝ
minimises the loss plus a gradient-norm penalty that favours flat regions (which transfer better
under distribution shift).

Where it departs from LoRA: the same adapters (``adapter = LoRALinear``), but each step's gradient
is replaced by ĝ, at the cost of two forward-backward passes; λ = 0 is plain LoRA, λ = 1 is SAM.

Choices:
- The rule above (the lab's, [unverified]).
- ‖g‖ is the norm over all given parameters together (one ε for the whole adapter set, as SAM);
  1e-12 guards a zero gradient.
- The parameters are restored after the second pass, also when it raises.
- Defaults (the lab's): ρ = 0.05 (SAM's), λ = 0.5.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from lab.checks import check_nonneg, check_positive
from lab.peft.lora import LoRALinear
from lab.registry import register


@register("peft", "glad", paper="GLAD: Generalizable Tuning for Vision-Language Models", arxiv="2507.13089")
class GLAD:
    """Sets ``p.grad`` to the SAM-steered gradient ĝ = g + λ·(g_sam − g) of LoRA parameters.

    Args:
        params: the trainable (adapter) parameters.
        rho: ρ, radius of SAM's ascent step.
        lam: λ, how far the original gradient is steered toward the SAM reference.
    """

    adapter = LoRALinear

    def __init__(self, params: Sequence[torch.nn.Parameter], *, rho: float = 0.05, lam: float = 0.5):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("params must contain at least one trainable parameter")
        self.rho = check_positive("rho", rho)
        self.lam = check_nonneg("lam", lam)

    def regularized_gradient(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run both passes (closure: forward + loss, no backward) and write ĝ into ``.grad``.

        Returns the loss at θ.
        """
        loss = closure()
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        g = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(self.params, grads)]
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))                    # ‖g‖
        eps = [self.rho * gi / (norm + 1e-12) for gi in g]                      # ε = ρ·g/‖g‖
        with torch.no_grad():
            for p, e in zip(self.params, eps):
                p.add_(e)
        try:
            grads_sam = torch.autograd.grad(closure(), self.params, allow_unused=True)
        finally:
            with torch.no_grad():
                for p, e in zip(self.params, eps):
                    p.sub_(e)
        for p, gi, gs in zip(self.params, g, grads_sam):
            gs = torch.zeros_like(p) if gs is None else gs
            p.grad = gi + self.lam * (gs - gi)                                  # ĝ = g + λ(g_sam − g)
        return loss.detach()
