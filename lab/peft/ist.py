"""IST: each step, update the adapters of only a few layers, chosen by learned layer importance.

Paper: "Layer-wise Importance Matters: Less Memory for Better Performance in Parameter-efficient
Fine-tuning of Large Language Models", Yao et al., arXiv 2410.11772 (EMNLP 2024 Findings;
repository Kaiseem/IST, which held no code when surveyed).

The algorithm: IST is a plug-in for any per-layer PEFT module (here LoRA). It runs two loops: a
fine-tuning loop that updates the adapters of a selected subset of L' of the L layers each step
(the others get no gradient and keep no activation graph), and an importance loop that scores each
layer by the "response suppression" of its adapter. The paper's exact selection rule and score
update were not available to the lab ([unverified]); the lab's rule, stated so it can be checked::

    selection:   sample L' layers without replacement, P(l) ∝ exp(s_l / τ)        (τ → 0: top-L')
    suppression: d_l = L(θ with adapter l switched off) − L(θ)   on the current batch, l selected
    importance:  s_l ← β·s_l + (1 − β)·d_l                                        (selected layers)

where s_l is layer l's importance score, τ = ``temperature``, β = ``beta``, L the training loss
and θ all parameters. Intuition: a layer whose adapter, when silenced, hurts the loss most is the
one that matters and gets picked more often; the softmax keeps exploring the others.

Where it departs from LoRA: only the selected adapters have ``requires_grad`` in a step, so memory
and compute of the backward scale with L' instead of L.

Choices:
- The selection and score rules above (the lab's, [unverified]); τ = 0 is a deterministic top-L'.
- Defaults: L' = half the layers (at least 1), τ = 1, β = 0.9, scores start at 0 (uniform
  selection).
- Unselected layers' gradients are cleared (``grad = None``) when a step's layers are chosen, and
  only the selected layers' scores move.
- Suppression switches the adapter off with ``enabled = False`` (:class:`lab.peft.core.AdapterLinear`).
- Scores, selection counts and the generator live on the CPU, wherever the model is.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from lab.checks import check_int, check_nonneg, check_range
from lab.peft.core import AdapterLinear
from lab.peft.lora import LoRALinear
from lab.registry import register


def select_layers(scores: torch.Tensor, k: int, *, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> list[int]:
    """Indices of k layers: sampled ∝ exp(s/τ) without replacement (top-k when τ = 0)."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 1:
        raise TypeError("scores must be a 1-D tensor")
    check_int("k", k, minimum=1)
    if k > scores.numel():
        raise ValueError(f"k must be <= the number of layers {scores.numel()}, got {k}")
    check_nonneg("temperature", temperature)
    if temperature == 0:
        return sorted(torch.topk(scores, k).indices.tolist())
    probs = torch.softmax(scores.double() / temperature, dim=0)              # P(l) ∝ exp(s_l/τ)
    return sorted(torch.multinomial(probs, k, replacement=False, generator=generator).tolist())


@register("peft", "ist", paper="Layer-wise Importance Matters: Less Memory for Better Performance in "
          "Parameter-efficient Fine-tuning of Large Language Models", arxiv="2410.11772")
class IST:
    """Importance-aware sparse tuning over a model's adapter layers.

    Args:
        layers: ``{name: adapter layer}`` (e.g. ``lab.peft.adapters(model)``).
        k: L', the number of layers updated per step (default: half, at least 1).
        temperature: τ of the selection softmax (0 = always the top-L').
        beta: β, the EMA rate of the importance scores.
        generator: seeds the selection (a CPU generator: the scores live on the CPU).
    """

    adapter = LoRALinear

    def __init__(self, layers: Mapping[str, AdapterLinear], *, k: int | None = None, temperature: float = 1.0,
                 beta: float = 0.9, generator: torch.Generator | None = None):
        self.layers = dict(layers)
        if not self.layers or not all(isinstance(m, AdapterLinear) for m in self.layers.values()):
            raise TypeError("layers must be a non-empty mapping of adapter layers")
        self.names = list(self.layers)
        self.k = max(1, len(self.names) // 2) if k is None else check_int("k", k, minimum=1)
        if self.k > len(self.names):
            raise ValueError(f"k must be <= the number of layers {len(self.names)}, got {self.k}")
        self.temperature = check_nonneg("temperature", temperature)
        self.beta = check_range("beta", beta, 0.0, 1.0, hi_open=True)
        self.generator = generator
        # bookkeeping of a few numbers per layer: on the CPU, like ``generator`` (wherever the model is)
        self.scores = torch.zeros(len(self.names), dtype=torch.float64, device="cpu")   # s_l
        self.selected: list[int] = list(range(len(self.names)))
        self.counts = torch.zeros(len(self.names), dtype=torch.long, device="cpu")     # times each layer was updated

    def select(self) -> list[str]:
        """Pick this step's layers and enable gradients on their adapters only; returns their names."""
        self.selected = select_layers(self.scores, self.k, temperature=self.temperature, generator=self.generator)
        for i, name in enumerate(self.names):
            for p in self.layers[name].adapter_parameters():
                p.requires_grad_(i in self.selected)
                if i not in self.selected:
                    p.grad = None
        self.counts[self.selected] += 1
        return [self.names[i] for i in self.selected]

    @torch.no_grad()
    def update_importance(self, loss_fn: Callable[[], torch.Tensor]) -> dict[str, float]:
        """Response suppression: s_l ← β·s_l + (1−β)·(L without adapter l − L), selected l only."""
        base_loss = float(loss_fn())
        drops = {}
        for i in self.selected:
            layer = self.layers[self.names[i]]
            layer.enabled = False
            suppressed = float(loss_fn())
            layer.enabled = True
            d = suppressed - base_loss                                       # d_l
            self.scores[i] = self.beta * self.scores[i] + (1 - self.beta) * d
            drops[self.names[i]] = d
        return drops

    def importance(self) -> dict[str, float]:
        """``{layer: s_l}``."""
        return {n: float(s) for n, s in zip(self.names, self.scores)}
