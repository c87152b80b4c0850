"""HAPO adaptive temperature sampling: hotter at the uncertain "fork" tokens, cooler elsewhere.

Paper: "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature",
Liu et al., arXiv 2509.16591 (reference code: starriver030515/HAPO, a verl fork).

The rule: each next token is sampled at its own temperature

    T_t = T · (1 + τ · h̃_t),      y_t ~ softmax(z_t / T_t)

where z_t are the policy's logits at position t, T the base temperature, τ the modulation strength
(0.05) and h̃_t ∈ [−1, 1] the normalized token entropy of :mod:`lab.rl.hapo` (pivot quantile p = 0.8
of log H, scales fitted on the *previous* batch). Intuition: about the 20% most uncertain positions
(h̃ > 0) explore more, the confident ones less. The sampler is one of HAPO's three uses of h̃; the
token-level advantage and the adaptive clipping live with the loss in :mod:`lab.rl.hapo`.

Where it departs from plain temperature sampling: the temperature is per token, a function of the
current logits' entropy normalized by statistics of the previous batch. τ = 0 is plain sampling.

Choices:
- Before its first ``update`` (no previous batch) it samples at T.
- h̃ as the paper defines it (∈ [−1, 1]); ``replicate_code_sign_bug=True`` reproduces the released
  code's mapping of negative h to positive h̃ (as ``policy_loss/hapo``), under which no token is
  cooled.
- In ``policy_optimization(token_sampler="adaptive_temperature")`` it is refitted after each batch
  and ``ℓ^old`` stays π_T's (as verl recomputes it at the base temperature).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from lab.checks import check_int, check_positive, check_range, check_tensor
from lab.registry import register
from lab.rl.hapo import ARXIV, PAPER, EntropyScale, fit_entropy_scale, normalized_entropy


@register("sampler", "adaptive_temperature", paper=PAPER, arxiv=ARXIV,
          summary="HAPO adaptive temperature: T_t = T(1 + tau h~_t), hotter at high-entropy tokens")
class AdaptiveTemperature:
    """Per-token sampling temperature ``T_t = T·(1 + τ·h̃_t)`` from the current logits' entropy.

    ``update(entropy, mask)`` fits the h̃ statistics on a finished batch; ``select(logits,
    generator=...)`` samples the next token of every row with its own temperature, using the
    statistics of the previous batch (before the first update: plain temperature T).

    Args:
        temperature: T, the base temperature.
        tau: τ, the modulation strength (0.05).
        entropy_pivot: p of the pivot quantile (0.8).
        replicate_code_sign_bug: as ``policy_loss/hapo``.
    """

    def __init__(self, temperature: float = 1.0, tau: float = 0.05, entropy_pivot: float = 0.8,
                 replicate_code_sign_bug: bool = False):
        self.temperature = check_positive("temperature", temperature)
        self.tau = check_range("tau", tau, 0.0, 1.0, hi_open=True)
        self.entropy_pivot = check_range("entropy_pivot", entropy_pivot, 0.0, 1.0)
        self.replicate_code_sign_bug = bool(replicate_code_sign_bug)
        self.scale: EntropyScale | None = None
        self.updates = 0

    def update(self, entropy: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Fit the pivot and scales on a batch's token entropies (B, T); returns them."""
        check_tensor("entropy", entropy, ndim=2, dtype_kind="float")
        self.scale = fit_entropy_scale(entropy, mask, entropy_pivot=self.entropy_pivot,
                                       replicate_code_sign_bug=self.replicate_code_sign_bug)
        self.updates += 1
        return {f"adaptive_temperature/{k}": v for k, v in asdict(self.scale).items()}

    def temperatures(self, logits: torch.Tensor) -> torch.Tensor:
        """T_t (…,) for next-token logits (…, V)."""
        check_tensor("logits", logits, dtype_kind="float")
        if self.scale is None:
            return torch.full(logits.shape[:-1], self.temperature, device=logits.device)
        logp = torch.log_softmax(logits.detach().float(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)                                  # (…,)
        h_tilde = normalized_entropy(entropy, scale=self.scale)
        # T_t = T·(1 + τ·h̃_t)
        return self.temperature * (1.0 + self.tau * h_tilde)

    def select(self, logits: torch.Tensor, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
        """Sample one token per row of ``logits`` (B, V) at its own temperature: ``(tokens (B,), metrics)``."""
        check_tensor("logits", logits, ndim=2, dtype_kind="float")
        temps = self.temperatures(logits)                                        # (B,)
        probs = torch.softmax(logits.detach().float() / temps[:, None], dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return tokens, {"temperature_mean": float(temps.mean()), "temperature_min": float(temps.min()),
                        "temperature_max": float(temps.max())}

    def state_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "tau": self.tau, "entropy_pivot": self.entropy_pivot,
                "replicate_code_sign_bug": self.replicate_code_sign_bug, "updates": self.updates,
                "scale": None if self.scale is None else asdict(self.scale)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.temperature, self.tau = float(state["temperature"]), float(state["tau"])
        self.entropy_pivot = float(state["entropy_pivot"])
        self.replicate_code_sign_bug = bool(state["replicate_code_sign_bug"])
        self.updates = check_int("updates", state["updates"], minimum=0)
        self.scale = None if state["scale"] is None else EntropyScale(**state["scale"])


__all__ = ["AdaptiveTemperature"]
