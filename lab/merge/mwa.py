"""MWA: merge checkpoints of one fine-tuning run with weights set by a training metric.

Paper: "Parameter-Efficient Checkpoint Merging via Metrics-Weighted Averaging", Yu et al., arXiv
2504.18580 (no public code surveyed).

The rule: K checkpoints θ_1..θ_K of one run (typically LoRA adapters) are merged into one::

    θ = Σ_k w_k·θ_k,      Σ_k w_k = 1

with w_k from a metric m_k of checkpoint k: its training loss (lower is better) or its training
step (later is better), shaped by a single "penalty factor" p whatever K is. The paper's exact
formula was not available to the lab ([unverified]); the lab uses power weights::

    metric = "loss":  w_k = m_k^{−p} / Σ_j m_j^{−p}       (m_k > 0)
    metric = "step":  w_k = m_k^{p}  / Σ_j m_j^{p}        (m_k > 0)

Intuition: p = 0 gives the uniform average 1/K (the paper's baseline); p → ∞ puts all weight on
the best checkpoint (lowest loss / last step); p in between trades the two. Hand-checked: losses
(1, 2), p = 1 → weights (2/3, 1/3).

Where it departs from uniform checkpoint averaging: only the weights w_k (uniform is p = 0).

Choices:
- Power weights of the metric (above), computed as a softmax of ``∓p log m_k`` so that a large p
  neither overflows nor underflows; metrics must be > 0 (``ValueError``).
- Defaults: ``penalty=1.0``, ``metric="loss"``.
- Every floating tensor is averaged in float64 and cast back to its dtype; non-floating entries
  (integer buffers such as BatchNorm's ``num_batches_tracked``) are taken from the first state.
- What is averaged: every tensor of the state dicts as given, i.e. LoRA's *factors* A and B
  separately when adapter state dicts are passed. Averaging factors is not averaging the
  updates (mean(B)·mean(A) ≠ mean(B·A)); to average the updates ΔW = s·B·A instead, merge each
  checkpoint's adapters first (``lab.peft.merge``) and average the merged weights — both are
  one call of :func:`average_state_dicts`. Along a single run the factors move little between
  late checkpoints, so the two nearly agree; across independent runs they do not.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from lab.checks import check_choice, check_nonneg, check_number
from lab.registry import register


def mwa_weights(metrics: Sequence[float], penalty: float = 1.0, metric: str = "loss") -> torch.Tensor:
    """The K merging weights w_k (see module docstring); sums to 1."""
    check_choice("metric", metric, ("loss", "step"))
    check_nonneg("penalty", penalty)
    values = [check_number("metrics", m) for m in metrics]
    if not values:
        raise ValueError("metrics must not be empty")
    if any(v <= 0 for v in values):
        raise ValueError(f"metrics must all be > 0 (losses or steps), got {values}")
    m = torch.tensor(values, dtype=torch.float64, device="cpu")          # (K,) on the CPU: K numbers
    sign = -1.0 if metric == "loss" else 1.0
    # w_k ∝ m_k^{∓p}, computed in log space for large p
    return torch.softmax(sign * penalty * torch.log(m), dim=0)


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]],
                        weights: Sequence[float] | torch.Tensor) -> dict[str, torch.Tensor]:
    """Σ_k w_k·θ_k key by key (floating tensors; other entries are taken from the first state)."""
    if not states:
        raise ValueError("states must not be empty")
    w = torch.as_tensor(weights, dtype=torch.float64, device="cpu")     # (K,) scalars; states may live anywhere
    if w.shape != (len(states),):
        raise ValueError(f"weights must have one entry per state ({len(states)}), got shape {tuple(w.shape)}")
    keys = list(states[0])
    for i, s in enumerate(states):
        if list(s) != keys:
            raise ValueError(f"state {i} has different keys from state 0")
    merged = {}
    for key in keys:
        first = states[0][key]
        if not first.is_floating_point():
            merged[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for wk, s in zip(w.tolist(), states):
            acc += wk * s[key].double()
        merged[key] = acc.to(first.dtype)
    return merged


@register("merge", "mwa", paper="Parameter-Efficient Checkpoint Merging via Metrics-Weighted Averaging",
          arxiv="2504.18580")
def mwa(states: Sequence[Mapping[str, torch.Tensor]], metrics: Sequence[float], *, penalty: float = 1.0,
        metric: str = "loss") -> dict[str, torch.Tensor]:
    """Metrics-weighted average of checkpoint state dicts (``penalty=0`` is the uniform average)."""
    if len(metrics) != len(states):
        raise ValueError(f"metrics must have one entry per state ({len(states)}), got {len(metrics)}")
    return average_state_dicts(states, mwa_weights(metrics, penalty, metric))
