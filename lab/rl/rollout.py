"""Group rollouts: ``G`` sampled responses per prompt, scored by a task, padded and masked.

    prompts  x_1 .. x_N                       drawn by ``task.sample_prompts(N, generator)``
    batch    x_1 ×G, x_2 ×G, ...              B = N·G rows, contiguous groups (group_ids = row // G)
    sample   y_i ~ π_τ(· | x_i)               ``policy.generate``: tokens, log-probs, entropies, mask
    score    R_i = task.reward(x_i, y_i)      (B,), ``correct`` = exact answers

Padding: a response ends at its first ``<eos>`` (included in the mask) or after ``max_new_tokens``;
later positions hold ``<pad>`` with mask 0, log-prob 0 and entropy 0. ``Rollout.batch()`` returns
the tensors under the names of ``spec/policy_losses.md`` F.1 so any estimator or loss can pick
what it needs (``lab.rl.core.call_with``); ``token_rewards`` puts ``R_i`` on the last valid token
(the form GAE and token-level REINFORCE use).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lab.checks import check_int


@dataclass
class Rollout:
    """One batch of B = n_prompts · group_size responses (shapes in the module docstring)."""

    prompts: torch.Tensor        # (B, P) long
    tokens: torch.Tensor         # (B, T) long, <pad> after <eos>
    mask: torch.Tensor           # (B, T) bool
    logprobs: torch.Tensor       # (B, T) sampling log-probs (the old_logprobs of the update)
    entropy: torch.Tensor        # (B, T)
    rewards: torch.Tensor        # (B,)
    correct: torch.Tensor        # (B,) bool
    group_ids: torch.Tensor      # (B,) long
    group_size: int

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) response lengths."""
        return self.mask.sum(-1)

    def batch(self) -> dict[str, Any]:
        """The rollout's tensors under the Part F.1 names."""
        return {"rewards": self.rewards, "group_size": self.group_size, "group_ids": self.group_ids,
                "mask": self.mask, "old_logprobs": self.logprobs, "entropy": self.entropy,
                "token_ids": self.tokens, "lengths": self.lengths,
                "token_rewards": token_rewards(self.rewards, self.mask)}


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) with ``R_i`` on the last valid token of row i (0 elsewhere; empty rows get nothing)."""
    lengths = mask.long().sum(-1)                                         # (B,)
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=mask.device)
    rows = (lengths > 0).nonzero()[:, 0]
    out[rows, lengths[rows] - 1] = rewards[rows]
    return out


def pad_responses(responses: list[list[int]], pad_id: int = 0, width: int | None = None,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to ``(tokens (B, T), mask (B, T))`` (on ``device``)."""
    width = max((len(r) for r in responses), default=0) if width is None else width
    rows = []
    for i, r in enumerate(responses):
        if len(r) > width:
            raise ValueError(f"response {i} has {len(r)} tokens, more than width={width}")
        rows.append(list(r) + [pad_id] * (width - len(r)))
    tokens = torch.tensor(rows, dtype=torch.long, device=device).reshape(len(responses), width)
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.long, device=device)
    mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
    return tokens, mask


def rollout(policy: Any, task: Any, n_prompts: int, group_size: int, *, temperature: float = 1.0,
            generator: torch.Generator, max_new_tokens: int | None = None,
            prompts: torch.Tensor | None = None, token_sampler: Any = None) -> Rollout:
    """Sample ``group_size`` responses for each of ``n_prompts`` prompts and score them.

    Args:
        policy: a model with ``generate(prompts, max_new_tokens, temperature, generator, eos_id, pad_id)``.
        task: a ``toy_envs.token_tasks.TokenTask``.
        n_prompts: N distinct prompts (ignored when ``prompts`` is given).
        group_size: G responses per prompt.
        temperature: sampling temperature τ.
        generator: drives prompts, sampling and stochastic rewards.
        max_new_tokens: response budget (default: the task's).
        prompts: (N, P) prompts to use instead of sampling them.
        token_sampler: picks each token from the logits (see :func:`lab.models.policy.generate`);
            passed to ``generate`` only when given.
    """
    check_int("group_size", group_size, minimum=1)
    if prompts is None:
        check_int("n_prompts", n_prompts, minimum=1)
        prompts = task.sample_prompts(n_prompts, generator)
    n = prompts.shape[0]
    batch_prompts = prompts.repeat_interleave(group_size, dim=0)                # (B, P)
    extra = {} if token_sampler is None else {"token_sampler": token_sampler}
    gen = policy.generate(batch_prompts, max_new_tokens or task.max_new_tokens, temperature,
                          generator, eos_id=task.eos_id, pad_id=task.pad_id, **extra)
    with torch.no_grad():
        rewards = task.reward(batch_prompts, gen.tokens, generator).float()    # (B,)
        correct = task.correct(batch_prompts, gen.tokens)
    group_ids = torch.arange(n, device=prompts.device).repeat_interleave(group_size)
    return Rollout(batch_prompts, gen.tokens, gen.mask, gen.logprobs, gen.entropy, rewards, correct,
                   group_ids, group_size)
