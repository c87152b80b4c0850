"""RL-Struct: a multi-dimensional, validity-gated reward for structured (JSON-like) output.

Paper: "RL-Struct: A Lightweight Reinforcement Learning Framework for Reliable Structured Output in
LLMs", Hu et al., arXiv 2512.00319. (Its abstract spells GRPO "Gradient Regularized Policy
Optimization"; the method trained is Group Relative Policy Optimization.)

The rule: structured-output quality is split into verifiable components, each in [0, 1]:

    r_struct   share of the required keys present
    r_format   style compliance (no stray text around the object)
    r_valid    1 if the output parses, else 0
    r_correct  content F1 of the values against the reference
    r_length   1 if the length constraint holds, else 0

    R = Σ_k w_k r_k,   gated: r_struct = r_correct = 0 when r_valid < 1

where w_k are the component weights and k runs over the five components; GRPO trains on R.
Intuition: syntax (valid, struct) is learned first and semantics (correct) later, an emergent
curriculum; the gate keeps an unparseable output from collecting credit for keys or content.

Where it departs from GRPO: only the reward.

Choices (the paper's weights and gating are not public):
- w = (0.2, 0.1, 0.3, 0.3, 0.1) for (struct, format, valid, correct, length), favouring validity and
  content.
- Gating on by default (``gate=False`` turns it off); only r_valid = 1 counts as valid.
- The verifiers that produce the component scores for the lab's toy live in
  :mod:`toy_envs.structured`.

Example: valid JSON, one of two required keys, F1 = 0.5, format and length ok →
R = 0.2·0.5 + 0.1·1 + 0.3·1 + 0.3·0.5 + 0.1·1 = 0.75.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_tensor
from lab.registry import register
from lab.rewards.multi_objective import weighted_sum

COMPONENTS = ("struct", "format", "valid", "correct", "length")
DEFAULT_WEIGHTS = (0.2, 0.1, 0.3, 0.3, 0.1)


@register("reward", "structured_output",
          paper="RL-Struct: A Lightweight Reinforcement Learning Framework for Reliable Structured Output in LLMs",
          arxiv="2512.00319", summary="RL-Struct: weighted, validity-gated sum of structure/format/validity/F1/length")
def structured_output(rewards: torch.Tensor, *, weights: Any = DEFAULT_WEIGHTS,
                      gate: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """Combine component scores ``rewards`` (B, 5) in the order of :data:`COMPONENTS` into R (B,).

    Args:
        rewards: (B, 5) scores in [0, 1]: struct, format, valid, correct, length.
        weights: w (5,), default (0.2, 0.1, 0.3, 0.3, 0.1).
        gate: zero r_struct and r_correct where r_valid = 0.
    """
    check_tensor("rewards", rewards, ndim=2, finite=True)
    if rewards.shape[1] != len(COMPONENTS):
        raise ValueError(f"rewards must have {len(COMPONENTS)} columns ({', '.join(COMPONENTS)}), "
                         f"got shape {tuple(rewards.shape)}")
    r = rewards.float()
    if ((r < 0) | (r > 1)).any():
        raise ValueError("rewards (component scores) must lie in [0, 1]")
    if gate:
        valid = (r[:, 2] >= 1.0).to(r.dtype)                                     # (B,)
        r = r.clone()
        r[:, 0] = r[:, 0] * valid
        r[:, 3] = r[:, 3] * valid
    combined = weighted_sum(r, weights)                                          # (B,)
    metrics = {f"structured/{name}": float(r[:, k].mean()) for k, name in enumerate(COMPONENTS)}
    metrics["reward"] = float(combined.mean())
    return combined, metrics


__all__ = ["structured_output", "COMPONENTS", "DEFAULT_WEIGHTS"]
