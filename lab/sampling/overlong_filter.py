"""Overlong filter: DAPO masks the loss of responses cut off by the token budget.

Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476, §3.4
("Overlong Reward Shaping": the first of its two remedies; the second is ``reward/overlong_penalty``).

The rule: a response that reaches the generation budget without ``<eos>`` was cut off: its reward judges an
unfinished answer, and a sound reasoning that merely ran long is punished like a wrong one. DAPO
masks the loss of such truncated samples,

    m'_{i,t} = m_{i,t} · 1[response i ended with <eos>]

so only finished responses train (TRL: ``mask_truncated_completions=True``). The advantages are
computed before, on the full group, so a truncated answer still shapes the group baseline.

Example: eos = 1, responses [5, 6, 1], [5, 6, 7] (budget 3), [4, 1, pad]: the second is truncated,
the new mask is [[1, 1, 1], [0, 0, 0], [1, 1, 0]].

Where it departs from GRPO: only the loss mask (a ``token_selector``); estimator and loss unchanged.

Choices: where the public material is open,
- "Truncated" = the row has valid tokens and its last valid token is not ``eos_id``; an empty row
  stays empty. ``eos_id`` defaults to 1, the lab's token tasks' ``<eos>``; ``policy_optimization``
  fills in the task's own.
- ``generator`` is accepted by ``select`` for the sampler contract; the rule is deterministic.

In ``policy_optimization``: ``token_selector="overlong_filter"``.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_tensor
from lab.registry import register
from lab.rl.core import as_mask

PAPER = "DAPO: An Open-Source LLM Reinforcement Learning System at Scale"


def truncated_rows(token_ids: torch.Tensor, mask: torch.Tensor, eos_id: int = 1) -> torch.Tensor:
    """(B,) bool: rows with valid tokens whose last valid token is not ``eos_id``."""
    valid = as_mask(mask).bool()
    check_tensor("token_ids", token_ids, shape=tuple(valid.shape))
    if token_ids.is_floating_point():
        raise TypeError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    positions = torch.arange(valid.shape[1], device=valid.device).expand(valid.shape)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).max(-1).values      # (B,)
    has = last >= 0
    last_token = token_ids.gather(1, last.clamp_min(0)[:, None]).squeeze(1)
    return has & (last_token != eos_id)


@register("sampler", "overlong_filter", paper=PAPER, arxiv="2503.14476",
          summary="DAPO overlong filtering: mask the loss of responses cut off without <eos>")
class OverlongFilter:
    """Drops the tokens of truncated responses from the loss mask.

    Args:
        eos_id: the end-of-sequence token (1 in the lab's token tasks).
    """

    def __init__(self, eos_id: int = 1):
        self.eos_id = check_int("eos_id", eos_id, minimum=0)

    def select(self, mask: torch.Tensor, *, token_ids: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(new mask (B, T) bool, metrics)``; metric ``overlong_filter/truncated_frac``."""
        valid = as_mask(mask).bool()
        truncated = truncated_rows(token_ids, valid, self.eos_id)
        n = max(int(valid.any(-1).sum()), 1)
        return valid & ~truncated[:, None], {"overlong_filter/truncated_frac": float(truncated.sum()) / n}

    def state_dict(self) -> dict[str, Any]:
        return {"eos_id": self.eos_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eos_id = check_int("eos_id", state["eos_id"], minimum=0)


__all__ = ["OverlongFilter", "truncated_rows"]
