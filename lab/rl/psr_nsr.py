"""PSR / NSR / W-REINFORCE / GRPO-N: learning from positive or negative samples only.

Paper: "The Debate on RLVR Reasoning Capability Boundary: Shrinkage, Expansion, or Both? A
Two-Stage Dynamic View", arXiv 2510.04028 (relative negative gradients, GRPO-N), and "The
Surprising Effectiveness of Negative Reinforcement in LLM Reasoning", Zhu et al., arXiv 2506.01347
(PSR, NSR, W-REINFORCE).

The loss: the policy gradient of a binary-reward objective splits into a positive part (push up
correct samples: sharpens the distribution, exploitation) and a negative part (push down
incorrect samples: the freed mass spreads over *all other* tokens in proportion to their
probability, exploration). With c_i = 1[R_i > threshold] ("correct"), each mode sets the
per-response advantage A_i and which responses enter the loss (keep_i):

    psr          A_i = +1 on correct,                  incorrect rows dropped
    nsr          A_i = −1 on incorrect,                correct rows dropped
    w_reinforce  A_i = λ on correct, −1 on incorrect,  all rows kept        (λ = lam = 0.1)
    grpo_n       A_i = min(A_i^in, 0),                 rows (tokens) with A^in > 0 dropped

where A^in are the advantages handed in (GRPO's group-normalized ones in the paper; any estimator
here). The loss is then the PPO-clip loss of ``lab.rl.core.clipped_policy_loss`` on the kept
tokens, aggregated with ``token_mean`` (as the NGRPO repository's PSR/NSR scripts).

Where it departs from GRPO: psr/nsr/w_reinforce replace the group-relative advantage by a fixed
±1 (λ) per response and so need no group at all; grpo_n keeps GRPO's advantages but removes the
positive-gradient component.

Choices where the public material is ambiguous:
- "correct" is R > ``threshold`` (0.5) so binary {0, 1} rewards behave as in the papers and
  partial-credit rewards are binarized.
- psr/nsr drop the other rows from the mask (as the reference code subsets the batch), so they do
  not count in the token-mean denominator. For grpo_n the spec leaves open whether positive
  samples stay in the denominator; the lab drops them too (same rule for every mode).
- psr/nsr/w_reinforce ignore the ``advantages`` argument (the method defines its own); grpo_n
  ignores ``rewards``.
- A batch with nothing kept (e.g. nsr with every answer correct) gives loss 0 with the graph kept.
- ``mode="grpo_n"`` by default (it needs only the advantages of the loop); the clip range is the
  lab's PPO default ε_low = ε_high = 0.2, no KL (β = 0).

On the toy tasks (``policy_optimization`` with ``loss="psr_nsr(mode='nsr')"``): on a bandit with
three equally correct arms PSR sharpens onto one of them (entropy towards 0) while NSR stops once
the wrong arms are gone and keeps all three correct answers (entropy log 3): pass@k diversity.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_choice, check_number, check_positive
from lab.registry import register
from lab.rl.core import (GlobalNorm, as_mask, check_rewards, check_token_inputs, clipped_policy_loss,
                         expand_advantages, prepare_policy_inputs)

MODES: tuple[str, ...] = ("psr", "nsr", "w_reinforce", "grpo_n")
PAPER = ("The Debate on RLVR Reasoning Capability Boundary: Shrinkage, Expansion, or Both? "
         "A Two-Stage Dynamic View")


def psr_nsr_advantages(mask: torch.Tensor, *, mode: str, rewards: torch.Tensor | None = None,
                       advantages: torch.Tensor | None = None, lam: float = 0.1,
                       threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages (B, T), keep (B, T) bool)`` of one mode (see the module docstring)."""
    check_choice("mode", mode, MODES)
    check_positive("lam", lam, allow_zero=True)
    threshold = check_number("threshold", threshold)
    mask_b = mask.bool()
    if mode == "grpo_n":
        if advantages is None:
            raise ValueError("mode 'grpo_n' needs advantages (e.g. from advantage/grpo)")
        adv = expand_advantages(advantages, mask_b)                             # (B, T)
        # drop the positive-gradient component: A ← min(A, 0), tokens with A > 0 leave the mask
        return adv.clamp(max=0.0), mask_b & (adv <= 0)
    if rewards is None:
        raise ValueError(f"mode {mode!r} needs rewards (B,)")
    rewards = check_rewards(rewards)
    if rewards.dim() != 1 or rewards.shape[0] != mask.shape[0]:
        raise ValueError(f"rewards must have shape ({mask.shape[0]},), got {tuple(rewards.shape)}")
    correct = rewards > threshold                                               # (B,)
    if mode == "psr":
        adv, keep = torch.ones_like(rewards), correct
    elif mode == "nsr":
        adv, keep = -torch.ones_like(rewards), ~correct
    else:  # w_reinforce: A = λ on correct, −1 on incorrect
        adv, keep = torch.where(correct, torch.full_like(rewards, lam), -torch.ones_like(rewards)), \
            torch.ones_like(correct)
    keep_t = mask_b & keep[:, None]                                             # (B, T)
    return expand_advantages(adv, keep_t), keep_t


@register("policy_loss", "psr_nsr", paper=PAPER, arxiv="2510.04028",
          summary="Positive / negative sample reinforcement (PSR, NSR, W-REINFORCE, GRPO-N)")
def psr_nsr(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
            mask: torch.Tensor, *, rewards: torch.Tensor | None = None, mode: str = "grpo_n",
            lam: float = 0.1, threshold: float = 0.5, ref_logprobs: torch.Tensor | None = None,
            entropy: torch.Tensor | None = None, clip_eps_low: float = 0.2,
            clip_eps_high: float = 0.2, beta: float = 0.0, kl_estimator: str = "k3",
            agg: str = "token_mean", norm: GlobalNorm | None = None,
            return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """PPO-clip loss on the positive-only / negative-only / weighted samples of ``mode``.

    Args:
        logprobs, old_logprobs, mask, ref_logprobs, entropy: as ``policy_loss/grpo``.
        advantages: (B,) or (B, T); used by ``grpo_n`` only.
        rewards: (B,) outcome rewards; needed by ``psr``, ``nsr`` and ``w_reinforce``.
        mode: one of ``psr``, ``nsr``, ``w_reinforce``, ``grpo_n``.
        lam: λ, W-REINFORCE's weight of correct samples (0.1).
        threshold: a response is correct when R > threshold.
        clip_eps_low, clip_eps_high, beta, kl_estimator, agg, norm, return_per_token: as GRPO.
    """
    # validate on the full mask: a NaN on a token the sign mask drops is still an error
    logprobs, mask_f, advantages, old_logprobs = prepare_policy_inputs(
        logprobs, old_logprobs, advantages, mask)
    extra = check_token_inputs(mask_f, tuple(logprobs.shape), ref_logprobs=ref_logprobs,
                               entropy=entropy)
    if rewards is not None:                                  # validated even where mode ignores it
        rewards = check_rewards(rewards)
        if rewards.shape != mask_f.shape[:1]:
            raise ValueError(f"rewards must have shape ({mask_f.shape[0]},), got {tuple(rewards.shape)}")
    adv, keep = psr_nsr_advantages(mask_f, mode=mode, rewards=rewards, advantages=advantages,
                                   lam=lam, threshold=threshold)
    loss, metrics = clipped_policy_loss(
        logprobs, old_logprobs, adv, keep, ref_logprobs=extra["ref_logprobs"], entropy=extra["entropy"],
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, beta=beta,
        kl_estimator=kl_estimator, agg=agg, norm=norm, return_per_token=return_per_token)
    total = mask_f.sum()
    metrics["psr_nsr/kept_frac"] = float(keep.sum() / total) if total > 0 else 0.0
    return loss, metrics


__all__ = ["MODES", "psr_nsr", "psr_nsr_advantages"]
