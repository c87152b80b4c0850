"""HPT: hybrid post-training, switching per prompt between SFT on a demonstration and RL.

Paper: "Towards a Unified View of Large Language Model Post-Training", Lv et al., arXiv 2509.04419
(code: TsinghuaC3I/Unify-Post-Training).

The unified policy gradient estimator writes SFT and RL gradients as instances of one form,

    grad_Uni = 1_stable · (1/π_ref) · Â · ∇π_θ

with 1_stable a stabilization mask (e.g. PPO's "not clipped"), π_ref the reference denominator
(π_θ itself for SFT and on-policy PG, giving ∇log π_θ; π_old for PPO), Â an advantage (1 on
demonstrations for SFT; R − b or group-normalized for RL) and ∇π_θ the likelihood gradient.

The loss: HPT picks the signal per prompt q from the model's own success: with n rollouts of which k_q are
correct and a gate γ,

    k_q ≤ γ   ->  SFT on the demonstration:   L_SFT = −(1/N_demo) Σ_{demo tokens} ℓ^demo
    k_q > γ   ->  RL on the rollouts:         L_RL  = agg(−ρ·A)   (no clipping in the recipe)

    L = L_RL + c_sft · L_SFT,

each term averaged over its own token set (prompts switched to SFT drop their rollouts). A model
that cannot yet solve a prompt imitates the demonstration; one that sometimes can explores with RL.

Where it departs from GRPO: the per-prompt switch to an SFT loss on a demonstration; the RL part
uses the released recipe's Dr. GRPO advantages (pass ``advantage/dr_grpo``) and no ratio clip.

Choices (spec, from the released code): γ = ``gate`` = 0 (SFT only when no rollout is correct);
c_sft = ``sft_coef`` = 1.0; ``clip=False`` (the recipe's ``loss_remove_clip``; ``clip=True``
gives the PPO-clip surrogate); RL aggregation ``seq_mean_token_sum_norm`` (the recipe sums over
tokens and divides by the padded length only; the lab also divides by the batch rows). A prompt
without a demonstration (or all of them when ``demo_logprobs`` is None) always trains with RL;
the recipe's second threshold ``switch_gate_off`` has unclear semantics and is not implemented.
"Correct" is R > ``threshold`` (0.5) when ``correct_counts`` is not given. Limits: ``gate=-1`` is
pure RL; ``gate >= n`` is pure SFT (where demonstrations exist).

Minibatches: the SFT/RL decision belongs to the prompt, so it must see the whole group.
:func:`hpt_batch_inputs` (the loss's ``batch_inputs`` hook, found by ``lab.rl.core.batch_hook``,
run by ``policy_optimization`` once on the full batch) gives each response its group's success
count k_q (``group_correct``); with it a minibatch holding 1 of a prompt's 8 rollouts decides exactly as the full batch does.

Where to run it: ``policy_optimization(loss="hpt", demonstrations=True)`` feeds the task's target
answers as demonstrations (without ``demonstrations`` it is the RL part alone); the experiment
``hybrid_post_training`` (``lab.experiments.segments``) shows the switch from SFT to RL and both
limits.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_number, check_positive, check_tensor
from lab.registry import register
from lab.rl.core import (GlobalNorm, aggregate, as_mask, check_per_token, check_rewards,
                         clipped_surrogate, expand_advantages, group_index, masked_mean,
                         policy_metrics, prepare_policy_inputs, ratio)

PAPER = "Towards a Unified View of Large Language Model Post-Training"


def hpt_batch_inputs(rewards: torch.Tensor, *, group_size: int | None = None,
                     group_ids: torch.Tensor | None = None, threshold: float = 0.5
                     ) -> dict[str, torch.Tensor]:
    """``{"group_correct": (B,)}``: k_q, the number of correct rollouts of each response's prompt,
    counted on the full batch (R > ``threshold``)."""
    rewards = check_rewards(rewards)
    threshold = check_number("threshold", threshold)
    index, n_groups = group_index(rewards.shape[0], group_size=group_size, group_ids=group_ids,
                                  device=rewards.device)
    correct = (rewards > threshold).to(torch.float64)
    counts = torch.zeros(n_groups, dtype=torch.float64, device=rewards.device).index_add_(0, index, correct)
    return {"group_correct": counts[index]}


def sft_prompts(correct_counts: torch.Tensor, gate: int, has_demo: torch.Tensor) -> torch.Tensor:
    """(n_prompts,) bool: prompts trained with SFT, ``k_q ≤ gate`` and a demonstration exists."""
    return (correct_counts <= gate) & has_demo


@register("policy_loss", "hpt", paper=PAPER, arxiv="2509.04419",
          summary="HPT: per-prompt switch between SFT on a demonstration and RL on rollouts")
def hpt(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
        mask: torch.Tensor, *, rewards: torch.Tensor | None = None, group_size: int | None = None,
        group_ids: torch.Tensor | None = None, correct_counts: torch.Tensor | None = None,
        group_correct: torch.Tensor | None = None, demo_logprobs: torch.Tensor | None = None, demo_mask: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None, gate: int = 0, sft_coef: float = 1.0,
        clip: bool = False, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
        threshold: float = 0.5, agg: str = "seq_mean_token_sum_norm",
        norm: GlobalNorm | None = None, return_per_token: bool = False
        ) -> tuple[torch.Tensor, dict[str, Any]]:
    """``L = L_RL(rollouts of prompts with k_q > gate) + sft_coef · L_SFT(demos of the others)``.

    Args:
        logprobs, old_logprobs, advantages, mask, entropy: the rollouts, as ``policy_loss/grpo``.
        rewards: (B,) used to count correct rollouts when ``correct_counts`` is None.
        group_size / group_ids: the prompt of each rollout (needed with demonstrations).
        correct_counts: (n_prompts,) k_q, in the order of the groups.
        group_correct: (B,) k_q of each response's prompt, counted on the full batch
            (:func:`hpt_batch_inputs`); used when ``correct_counts`` is None, so a minibatch
            holding part of a group decides as the full batch does.
        demo_logprobs: (n_prompts, T_d) current log-probs of each prompt's demonstration (with
            grad); rows of prompts without a demonstration have an all-zero ``demo_mask`` row.
        demo_mask: (n_prompts, T_d) demonstration tokens.
        gate: γ; SFT when k_q ≤ γ.
        sft_coef: c_sft, weight of the SFT term.
        clip: use the PPO-clip surrogate instead of the unclipped −ρA.
        clip_eps_low, clip_eps_high: clip range when ``clip``.
        threshold: a rollout is correct when R > threshold.
        agg, norm: aggregation of the RL term.
        return_per_token: also return the RL per-token loss.
    """
    gate = check_int("gate", gate)
    sft_coef = check_positive("sft_coef", sft_coef, allow_zero=True)
    threshold = check_number("threshold", threshold)
    logprobs, mask_f, advantages, old_logprobs = prepare_policy_inputs(
        logprobs, old_logprobs, advantages, mask)
    n = mask_f.shape[0]
    rl_rows = torch.ones(n, dtype=torch.bool, device=mask_f.device)
    sft_loss = logprobs.sum() * 0.0
    sft_frac = 0.0
    if demo_logprobs is not None:
        check_tensor("demo_logprobs", demo_logprobs, ndim=2, dtype_kind="float")
        demo_m = torch.ones_like(demo_logprobs) if demo_mask is None else \
            as_mask(demo_mask, demo_logprobs, "demo_mask")
        index, n_groups = group_index(n, group_size=group_size, group_ids=group_ids, device=mask_f.device)
        if demo_logprobs.shape[0] != n_groups:
            raise ValueError(f"demo_logprobs must have one row per prompt ({n_groups}), "
                             f"got {tuple(demo_logprobs.shape)}")
        if correct_counts is None and group_correct is not None:
            check_tensor("group_correct", group_correct, shape=(n,), finite=True)
            correct_counts = torch.zeros(n_groups, dtype=torch.float64, device=group_correct.device)
            correct_counts = correct_counts.scatter_(0, index, group_correct.to(torch.float64))
        if correct_counts is None:
            if rewards is None:
                raise ValueError("hpt needs correct_counts or rewards to decide SFT vs RL")
            rewards = check_rewards(rewards)
            if rewards.shape != (n,):
                raise ValueError(f"rewards must have shape ({n},) like the rows of logprobs, "
                                 f"got {tuple(rewards.shape)}")
            correct = (rewards > threshold).to(torch.float64)
            correct_counts = torch.zeros(n_groups, dtype=torch.float64, device=correct.device).index_add_(0, index, correct)
        check_tensor("correct_counts", correct_counts, shape=(n_groups,))
        sft = sft_prompts(correct_counts, gate, demo_m.sum(-1) > 0)             # (n_groups,)
        rl_rows = ~sft[index]                                                   # (B,)
        sft_tokens = demo_m * sft[:, None].to(demo_m.dtype)                     # (P, T_d)
        # L_SFT = token-mean NLL over the demonstrations of the SFT prompts
        sft_loss = -masked_mean(check_per_token("demo_logprobs", demo_logprobs, demo_m.shape, demo_m),
                                sft_tokens)
        sft_frac = float(sft.to(torch.float32).mean())
    rl_mask = mask_f * rl_rows[:, None].to(mask_f.dtype)                        # (B, T)
    rho = ratio(logprobs, old_logprobs)                                         # (B, T)
    adv = expand_advantages(advantages, rl_mask)                                # (B, T)
    if clip:
        pg, regions = clipped_surrogate(rho, adv, clip_eps_low, clip_eps_high)
    else:
        # the plain importance-weighted policy gradient −ρ·A (1_stable ≡ 1)
        pg, regions = -adv * rho, None
    rl_loss = aggregate(pg, rl_mask, agg, norm)
    loss = rl_loss + sft_coef * sft_loss
    metrics = policy_metrics(rl_mask, loss=loss, pg_loss=rl_loss, ratio=rho, advantages=adv,
                             regions=regions, logprobs=logprobs, old_logprobs=old_logprobs,
                             entropy=entropy)
    metrics.update({"hpt/sft_frac": sft_frac, "hpt/sft_loss": float(sft_loss.detach()),
                    "hpt/rl_loss": float(rl_loss.detach())})
    if return_per_token:
        metrics["per_token_loss"] = pg.detach()
    return loss, metrics


hpt.batch_inputs = hpt_batch_inputs

__all__ = ["hpt", "hpt_batch_inputs", "sft_prompts"]
