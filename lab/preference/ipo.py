"""IPO: regress the preference log-ratio margin to a finite target instead of pushing it to ∞.

Paper: "A General Theoretical Paradigm to Understand Learning from Human Preferences", Azar et al.,
arXiv 2310.12036.

The loss (the ΨPO family with Ψ = identity, paper eq. 17)::

    h = (S_w − S_w^ref) − (S_l − S_l^ref)
    L = mean_P [ (h − 1/(2τ))² ]

where P is the number of pairs, S = Σ_t m_t ℓ_t the sequence log-prob of the chosen (w) or
rejected (l) response under π_θ, S^ref the same under the frozen reference, and τ > 0 the
regularization strength (the target margin is 1/(2τ); τ = 0.1 → 5). Intuition: DPO's logistic loss
keeps rewarding a larger margin even for pairs it already orders (σ(βz) → 1 only as z → ∞), so with
deterministic preferences the KL regularization is lost; a squared error to a finite target stops
there.

Where it departs from DPO: in the link only (a squared error to 1/(2τ) instead of −log σ(βz)); the
implicit reward and the inputs are DPO's.

Choices:
- τ is passed as ``beta`` (as TRL names it).
- ``length_normalize=False`` (default) is the paper's equation (OpenRLHF);
  ``length_normalize=True`` divides each log-ratio by its completion length,
  ``h = (S_w − S_w^ref)/L_w − (S_l − S_l^ref)/L_l`` (TRL's ``loss_type="ipo"``, "confirmed with the
  authors"). The two differ by orders of magnitude on long responses.
- Metrics report the implicit rewards τ·(S − S^ref) for comparability with DPO; ``ipo/margin_h`` is
  mean h.

Example (spec): log-ratios +2 (L_w = 4) and −2 (L_l = 2), τ = 0.1: normalized h = 1.5 → L = 12.25;
unnormalized h = 4 → L = 1.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_positive
from lab.registry import register
from lab.preference.core import check_flag, log_ratios, mean_loss, pair_inputs, preference_metrics


@register("preference_loss", "ipo", paper="A General Theoretical Paradigm to Understand Learning from Human "
          "Preferences", arxiv="2310.12036")
def ipo(chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, *, chosen_mask: torch.Tensor,
        rejected_mask: torch.Tensor, ref_chosen_logprobs: torch.Tensor | None = None,
        ref_rejected_logprobs: torch.Tensor | None = None, beta: float = 0.1,
        length_normalize: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """IPO loss ``mean (h − 1/(2τ))²`` with τ = ``beta``; see the module docstring."""
    tau = check_positive("beta", beta)
    check_flag("length_normalize", length_normalize)
    batch = pair_inputs(chosen_logprobs, rejected_logprobs, chosen_mask=chosen_mask, rejected_mask=rejected_mask,
                        ref_chosen_logprobs=ref_chosen_logprobs, ref_rejected_logprobs=ref_rejected_logprobs,
                        require_ref=True)
    chosen_ratio, rejected_ratio = log_ratios(batch, length_normalize)                   # (P,), (P,)
    h = chosen_ratio - rejected_ratio
    # (h − 1/(2τ))²
    loss = mean_loss((h - 1.0 / (2.0 * tau)) ** 2, batch)
    metrics = preference_metrics(loss, tau * chosen_ratio, tau * rejected_ratio, batch)
    metrics["ipo/margin_h"] = float(h.detach().mean()) if len(h) else 0.0
    return loss, metrics
