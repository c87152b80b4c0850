"""Balanced online difficulty filtering: train only on prompts the current policy solves sometimes.

Paper: "Online Difficulty Filtering for Reasoning Oriented Reinforcement Learning", Bae et al.,
arXiv 2504.03380.

The rule: with G rollouts of prompt q and rewards R_1..R_G ∈ [0, 1] (0/1 for a verifier), the
sampled accuracy (pass rate) is

    p̂_q = (1/G) Σ_i R_i

and the prompt's group is kept for the update iff

    T_low ≤ p̂_q ≤ T_high              (balanced: the window is symmetric around 1/2)

where T_low ≤ T_high are the window's ends. The rollouts are generated first and the groups outside
the window are dropped; the loop keeps sampling fresh prompts until the batch holds its fixed
number of groups ("refill"), so every update sees the same number of informative groups at the
price of extra rollouts. Intuition: an all-correct or all-wrong group has zero GRPO advantage (no
gradient); the paper shows the lower bound of KL(π_init ‖ π*) it can reach grows with the variance
p(1 − p) of the sampled accuracy, which is largest at p = 1/2 — so the batch should hold
intermediate prompts.

Where it departs from GRPO: the estimator and the loss are GRPO's; only the batch changes. DAPO's
dynamic sampling ("keep std > 0") is the special case 0 < T_low ≤ 1/G, 1 − 1/G ≤ T_high < 1 for
0/1 rewards.

Choices (the public material leaves them open; [unverified] in the spec):
- Window defaults T_low = 0.25, T_high = 0.75 (balanced); both ends are inclusive.
- Non-binary rewards (partial credit) are allowed if they lie in [0, 1]: p̂ is then the mean reward.
- The refill loop lives in the experiment (``lab.experiments.curricula``); this class gives the
  keep decision (``select``) and a running keep rate (``update``, momentum 0.9, starting at 1) from
  which ``n_candidates(n) = ⌈n / keep rate⌉`` sizes the next oversampled rollout, capped at
  ``max_oversample · n``.
- ``generator`` is accepted by ``select`` for the sampler contract; the rule is deterministic and
  draws nothing.
- Devices: the bookkeeping (keep rate, counts) is plain Python numbers, on the host whatever the
  experiment's device; ``select`` computes on the device of ``rewards`` and returns the kept group
  indices there (on the GPU in a GPU run of ``curriculum``).

Example: G = 4, pass rates p̂ = [0, 0.25, 0.5, 1], window [0.25, 0.75] -> keep prompts 1 and 2.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lab.checks import check_int, check_number, check_range, check_tensor
from lab.registry import register
from lab.rl.core import check_rewards, group_index

PAPER = "Online Difficulty Filtering for Reasoning Oriented Reinforcement Learning"
ARXIV = "2504.03380"


def pass_rates(rewards: torch.Tensor, *, group_size: int | None = None,
               group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """p̂_q = mean reward of each group, (n_groups,) in the order of ``group_index``."""
    rewards = check_rewards(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    if rewards.numel() and (rewards.min() < 0 or rewards.max() > 1):
        raise ValueError("rewards must lie in [0, 1] (a pass/fail verdict or a partial credit)")
    index, n_groups = group_index(rewards.shape[0], group_size=group_size, group_ids=group_ids,
                                  device=rewards.device)
    total = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, index, rewards)
    count = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, index, torch.ones_like(rewards))
    return total / count


@register("sampler", "difficulty_filter", paper=PAPER, arxiv=ARXIV,
          summary="Keep groups whose pass rate lies in [T_low, T_high] and refill the batch")
class DifficultyFilter:
    """Keeps the groups of intermediate pass rate; tracks the keep rate to size the refill.

    Args:
        low: T_low, the smallest pass rate kept (0.25).
        high: T_high, the largest pass rate kept (0.75).
        momentum: weight of the old value in the running keep rate (0.9).
        max_oversample: cap of ``n_candidates(n) / n`` (8).
    """

    def __init__(self, low: float = 0.25, high: float = 0.75, momentum: float = 0.9,
                 max_oversample: float = 8.0):
        self.low = check_range("low", low, 0.0, 1.0)
        self.high = check_range("high", high, 0.0, 1.0)
        if self.low > self.high:
            raise ValueError(f"low must be <= high, got low={low}, high={high}")
        self.momentum = check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.max_oversample = check_number("max_oversample", max_oversample)
        if self.max_oversample < 1:
            raise ValueError(f"max_oversample must be >= 1, got {max_oversample}")
        self.keep_rate = 1.0          # running share of groups kept (starts optimistic)
        self.seen = 0                 # groups judged so far
        self.kept = 0                 # groups kept so far

    def keep(self, rates: torch.Tensor) -> torch.Tensor:
        """(n,) bool: T_low ≤ p̂ ≤ T_high."""
        check_tensor("rates", rates, ndim=1, finite=True)
        return (rates >= self.low) & (rates <= self.high)

    def select(self, rewards: torch.Tensor, *, group_size: int | None = None,
               group_ids: torch.Tensor | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Indices (sorted, long) of the groups to keep, and metrics.

        Args:
            rewards: (B,) rewards in [0, 1] of B = n_groups · G rollouts.
            group_size, group_ids: the groups (exactly one, as the advantage estimators).
            generator: unused (the rule is deterministic); part of the sampler contract.

        Metrics: ``difficulty_filter/keep_frac``, ``/too_easy_frac``, ``/too_hard_frac``,
        ``/pass_rate_mean``, and ``frac_zero_std_groups`` of the candidates.
        """
        rates = pass_rates(rewards, group_size=group_size, group_ids=group_ids)   # (n_groups,)
        keep = self.keep(rates)
        index, _ = group_index(rewards.shape[0], group_size=group_size, group_ids=group_ids,
                               device=rewards.device)
        lo = torch.full_like(rates, math.inf).scatter_reduce(0, index, rewards.float(), "amin")
        hi = torch.full_like(rates, -math.inf).scatter_reduce(0, index, rewards.float(), "amax")
        n = max(rates.numel(), 1)
        metrics = {"difficulty_filter/keep_frac": float(keep.sum()) / n,
                   "difficulty_filter/too_easy_frac": float((rates > self.high).sum()) / n,
                   "difficulty_filter/too_hard_frac": float((rates < self.low).sum()) / n,
                   "difficulty_filter/pass_rate_mean": float(rates.mean()) if rates.numel() else 0.0,
                   "frac_zero_std_groups": float((hi == lo).sum()) / n}
        return keep.nonzero()[:, 0], metrics

    def update(self, n_seen: int, n_kept: int) -> dict[str, float]:
        """Record that ``n_kept`` of ``n_seen`` judged groups passed; updates the keep rate."""
        n_seen = check_int("n_seen", n_seen, minimum=0)
        n_kept = check_int("n_kept", n_kept, minimum=0)
        if n_kept > n_seen:
            raise ValueError(f"n_kept must be <= n_seen, got {n_kept} > {n_seen}")
        if n_seen:
            self.keep_rate = self.momentum * self.keep_rate + (1 - self.momentum) * n_kept / n_seen
        self.seen += n_seen
        self.kept += n_kept
        return {"difficulty_filter/keep_rate": self.keep_rate,
                "difficulty_filter/total_keep_frac": self.kept / max(self.seen, 1)}

    def n_candidates(self, n: int) -> int:
        """Prompts to roll out to expect ``n`` kept groups: ⌈n / keep_rate⌉, ≤ max_oversample·n."""
        n = check_int("n", n, minimum=0)
        cap = math.ceil(self.max_oversample * n)
        return min(cap, math.ceil(n / max(self.keep_rate, 1e-9)))

    def state_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "momentum": self.momentum,
                "max_oversample": self.max_oversample, "keep_rate": self.keep_rate,
                "seen": self.seen, "kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = DifficultyFilter(state["low"], state["high"], state["momentum"],
                                    state["max_oversample"])
        restored.keep_rate = check_range("keep_rate", state["keep_rate"], 0.0, 1.0)
        restored.seen = check_int("seen", state["seen"], minimum=0)
        restored.kept = check_int("kept", state["kept"], minimum=0)
        self.__dict__.update(restored.__dict__)


__all__ = ["DifficultyFilter", "pass_rates"]
