"""Dynamic sampling: DAPO drops groups without reward spread and rolls out more to fill the batch.

Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476, §3.2
(the third of DAPO's changes to GRPO; the loss is ``policy_loss/dapo``, the overlong reward shaping
``reward/overlong_penalty``, overlong filtering the sampler ``overlong_filter``).

The rule: with group-normalized advantages, a group whose G rewards are all equal (every answer right, or
every answer wrong) has A_i = 0 for every i: it contributes no gradient but still counts in the
batch, so as accuracy rises the effective batch shrinks and the gradient gets noisier. DAPO keeps a
group g only if

    0 < #{i ∈ g : R_i = 1} < G        (equivalently std_g(R) > 0, for any rewards)

and keeps generating fresh groups until the training batch holds its N prompts, capped at
``max_rounds`` generation rounds (verl's ``max_num_gen_batches``; DAPO's run: 10).

Example: rewards [1, 1 | 0, 1 | 0, 0], G = 2 -> keep group 1 only (the others have no spread).

Where it departs from GRPO: the estimator and the loss are GRPO's (DAPO's); only which groups form
the batch changes, at the price of extra rollouts. Balanced difficulty filtering
(``sampler/difficulty_filter``) with T_low = 1/G, T_high = 1 − 1/G keeps the same groups for 0/1
rewards; this sampler needs no threshold and works for any reward values.

Choices: where the public material is open,
- The cap: when ``max_rounds`` rounds have not produced N informative groups, verl raises an error;
  the lab fills the batch up with the latest rejected groups instead (their GRPO advantage is 0,
  as without the filter) and reports the share it had to fill (``dynamic_sampling/filled_frac``),
  so a long run never stops because a batch happened to be solved.
- Rounds roll out N fresh prompts each (verl: ``gen_batch_size``; the lab: the loop's ``n_prompts``).
- ``generator`` is accepted by ``select`` for the sampler contract; the rule is deterministic.

In ``policy_optimization``: ``group_filter="dynamic_sampling(max_rounds=4)"``; the loop logs the
rollouts it spent (``rollouts``) and the sampler's metrics.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int
from lab.registry import register
from lab.rl.core import check_rewards, group_stats

PAPER = "DAPO: An Open-Source LLM Reinforcement Learning System at Scale"


def dynamic_sampling_filter(rewards: torch.Tensor, *, group_size: int | None = None,
                            group_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Keep mask (B,) bool: True for responses whose group has at least two distinct rewards."""
    rewards = check_rewards(rewards)
    stats = group_stats(rewards, group_size=group_size, group_ids=group_ids)
    keep = ~stats.zero_std[stats.index]
    return keep, {"kept_groups": float((~stats.zero_std).sum()), "n_groups": float(stats.n_groups),
                  "frac_zero_std_groups": float(stats.zero_std.float().mean()) if stats.n_groups else 0.0}


@register("sampler", "dynamic_sampling", paper=PAPER, arxiv="2503.14476",
          summary="DAPO dynamic sampling: keep groups with reward spread, refill for up to max_rounds")
class DynamicSampling:
    """Keeps the groups whose rewards are not all equal; the loop refills for up to ``max_rounds``.

    Args:
        max_rounds: the most generation rounds per training batch (≥ 1; 1 = filter, never refill).
    """

    def __init__(self, max_rounds: int = 10):
        self.max_rounds = check_int("max_rounds", max_rounds, minimum=1)
        self.seen = 0                 # groups judged so far
        self.kept = 0                 # groups kept so far

    def select(self, rewards: torch.Tensor, *, group_size: int | None = None,
               group_ids: torch.Tensor | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Indices (sorted, long) of the groups with reward spread, and metrics.

        Args:
            rewards: (B,) or (B, K) rewards of n_groups · G rollouts.
            group_size, group_ids: the groups (as the advantage estimators).
            generator: unused (the rule is deterministic); part of the sampler contract.

        Metrics: ``dynamic_sampling/keep_frac`` (share of these groups kept) and
        ``frac_zero_std_groups``.
        """
        keep_rows, m = dynamic_sampling_filter(rewards, group_size=group_size, group_ids=group_ids)
        stats = group_stats(check_rewards(rewards), group_size=group_size, group_ids=group_ids)
        kept = (~stats.zero_std).nonzero()[:, 0]
        n = max(stats.n_groups, 1)
        self.seen += stats.n_groups
        self.kept += int(kept.numel())
        return kept, {"dynamic_sampling/keep_frac": kept.numel() / n,
                      "frac_zero_std_groups": m["frac_zero_std_groups"]}

    def state_dict(self) -> dict[str, Any]:
        return {"max_rounds": self.max_rounds, "seen": self.seen, "kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = DynamicSampling(state["max_rounds"])
        restored.seen = check_int("seen", state["seen"], minimum=0)
        restored.kept = check_int("kept", state["kept"], minimum=0)
        self.__dict__.update(restored.__dict__)


__all__ = ["DynamicSampling", "dynamic_sampling_filter"]
