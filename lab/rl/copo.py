"""COPO: consistency-aware policy optimization (global, prompt-level advantage + entropy blending).

Paper: "COPO: Consistency-Aware Policy Optimization", Han et al., arXiv 2508.04138
(code: hijih/copo-code).

The loss: when all G responses of a prompt reach the same outcome, GRPO's local advantage is zero
and the prompt teaches nothing. COPO adds a *global* signal that compares prompts with each other.
For prompt q with group g(q), rewards R_i and final answers a_i:

    local       A^loc_i  = (R_i − mean_g R) / (std_g R + eps)                       (GRPO)
    consistency H_q      = −Σ_a p_a log2 p_a,  p_a = share of answer a in the group  (bits)
    global      c_q      = mean_g R  (× (1 − κ·H_q), κ = (1 − 1/G)/log2 G, if ``entropy_coef``)
                A^glob_q = (c_q − mean_batch c) / (std_batch c + eps)   (over the batch's prompts)
    blend       w_q      = σ(γ·(H_q − ρ))          weight of the local loss; 1 − w_q of the global
    loss        L        = agg( w_q·pg(A^loc_i) + (1 − w_q)·pg(A^glob_q) )

pg(A) = max(−ρA, −clip(ρ, 1−ε_low, 1+ε_high)A) per token (``lab.rl.core.clipped_surrogate``; ρ
here is the importance ratio, the blending threshold is ``rho``), γ the blending sharpness, σ the
logistic function, agg the loss aggregation and eps = 1e-6. Consistent groups (low H_q: all
answers alike) are trained by the global signal, diverse groups (high H_q) by the local one.

Two registered pieces:
- ``advantage/copo`` returns the blended advantage A_i = w_q A^loc_i + (1 − w_q) A^glob_q, usable
  with any policy loss. Because pg(A) is linear in A on the unclipped branch, this equals the
  loss blend whenever the ratio is inside the clip range (always on the first, on-policy epoch);
  it differs only where A^loc and A^glob have opposite signs *and* ρ is clipped.
- ``policy_loss/copo`` is the exact loss blend: ``advantages`` are the local ones (from any
  estimator; GRPO's in the paper), and the global advantage and weight are computed from
  ``rewards`` and the answers. Without ``rewards`` it is the plain clipped loss.

Where it departs from GRPO: the extra global advantage, shared by all responses of a prompt and
normalized across prompts, and the per-prompt entropy-driven blending of the two losses.

Choices (the paper's text is not specific; the public code is the reference):
- Blending ``blend``: ``"soft"`` (w_q as above, the code's ``only-soft``, default), ``"soft_forced"``
  (also w_q = 0 where the local advantage is all zero: the code's ``soft-with-forced``),
  ``"local"`` (w = 1: GRPO) and ``"global"`` (w = 0).
- γ = 20, ρ = 0.5 bits: the released run scripts' ``k`` and ``b``; entropy in bits (log2).
- ``entropy_coef=False`` (the code's default ``reward_coef_flg=false``): c_q is the group's mean
  reward.
- Answers: ``answers`` (B,) integer labels; else the response tokens themselves (``token_ids``
  under ``mask``: equal responses = equal answers, right for the toy tasks whose response is the
  answer); else the rewards (equal reward = equal outcome).
- Batch std is unbiased with eps 1e-6 (as the code's ``torch.std``); a batch of one prompt has
  std 0, so A^glob = 0 there.

Minibatches: A^glob compares the prompts of the *whole* batch and w_q needs the whole group, so
:func:`copo_batch_inputs` (the loss's ``batch_inputs`` hook, found by ``lab.rl.core.batch_hook``)
computes both once on the full batch; ``policy_optimization`` runs it before splitting the batch,
and each minibatch row carries its ``global_advantages`` and ``local_weights``.

In ``policy_optimization``: ``loss="copo"`` (with GRPO's advantages) is the paper's loss blend;
``advantage="copo"`` works with any loss. A batch where *every* prompt fails alike has no global
signal either (all c_q equal).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lab.checks import check_choice, check_number, check_tensor
from lab.registry import register
from lab.rl.core import (GlobalNorm, advantage_metrics, aggregate, as_mask, check_rewards,
                         clipped_surrogate, expand_advantages, group_normalize,
                         policy_metrics, prepare_policy_inputs, ratio)

BLENDS: tuple[str, ...] = ("soft", "soft_forced", "local", "global")
PAPER = "COPO: Consistency-Aware Policy Optimization"


@dataclass(frozen=True)
class CopoSignals:
    """Per-response (B,) pieces of COPO: local and global advantages, local weight, entropy."""

    local: torch.Tensor
    global_: torch.Tensor
    weight: torch.Tensor
    entropy: torch.Tensor


def answer_labels(n: int, *, answers: torch.Tensor | None = None,
                  token_ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                  rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Integer answer label per response: ``answers``, else distinct masked responses, else rewards."""
    if answers is not None:
        check_tensor("answers", answers, ndim=1)
        if answers.is_floating_point() or answers.shape[0] != n:
            raise ValueError(f"answers must be an integer tensor of shape ({n},), got "
                             f"{answers.dtype} {tuple(answers.shape)}")
        return answers
    if token_ids is not None:
        check_tensor("token_ids", token_ids, ndim=2)
        if mask is None or mask.shape != token_ids.shape:
            raise ValueError("token_ids need a mask of the same shape to define the answers")
        masked = torch.where(as_mask(mask).bool(), token_ids.long(), torch.full_like(token_ids.long(), -1))
        return torch.unique(masked, dim=0, return_inverse=True)[1]
    if rewards is None:
        raise ValueError("give answers, token_ids (with mask) or rewards to define the answers")
    return torch.unique(rewards, return_inverse=True)[1]


def consistency_entropy(labels: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """H_q = −Σ_a p_a log2 p_a of the answer labels within each group, per group (n_groups,)."""
    _, lab = torch.unique(labels, return_inverse=True)
    n_labels = int(lab.max()) + 1 if lab.numel() else 1
    counts = torch.zeros(n_groups, n_labels, dtype=torch.float64, device=labels.device)
    counts.index_put_((index, lab), torch.ones(lab.shape[0], dtype=torch.float64, device=labels.device), accumulate=True)
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    return -(torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))).sum(-1)


def copo_signals(rewards: torch.Tensor, *, group_size: int | None = None,
                 group_ids: torch.Tensor | None = None, labels: torch.Tensor,
                 local_active: torch.Tensor | None = None, gamma: float = 20.0, rho: float = 0.5,
                 blend: str = "soft", entropy_coef: bool = False, eps: float = 1e-6) -> CopoSignals:
    """The local (GRPO) and global advantages, the local weight w and the entropy H, per response.

    ``local_active`` (B,) bool marks responses whose local advantage is non-zero (used by
    ``blend="soft_forced"``); by default the GRPO advantage's own zeros.
    """
    rewards = check_rewards(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    check_choice("blend", blend, BLENDS)
    gamma = check_number("gamma", gamma)
    rho = check_number("rho", rho)
    local, stats = group_normalize(rewards, group_size=group_size, group_ids=group_ids, eps=eps)
    index, n_groups = stats.index, stats.n_groups
    active = local != 0 if local_active is None else local_active.bool()
    h_group = consistency_entropy(labels, index, n_groups).to(rewards.dtype)    # (n_groups,)
    count = rewards.new_zeros(n_groups).index_add_(0, index, torch.ones_like(rewards))
    # c_q = mean_g R  (optionally × (1 − κ H_q), κ = (1 − 1/G)/log2 G)
    c = rewards.new_zeros(n_groups).index_add_(0, index, rewards) / count
    if entropy_coef:
        kappa = torch.where(count > 1, (1 - 1 / count) / torch.log2(count.clamp_min(2.0)),
                            torch.zeros_like(count))
        c = c * (1 - kappa * h_group)
    # A^glob_q = (c_q − mean c)/(std c + eps) across the prompts of the batch
    global_q, _ = group_normalize(c, group_ids=torch.zeros(n_groups, dtype=torch.long, device=c.device), eps=eps)
    h = h_group[index]                                                          # (B,)
    if blend == "local":
        w = torch.ones_like(h)
    elif blend == "global":
        w = torch.zeros_like(h)
    else:
        # w_q = σ(γ (H_q − ρ)): weight of the local loss
        w = torch.sigmoid(gamma * (h - rho))
        if blend == "soft_forced":
            w = torch.where(active, w, torch.zeros_like(w))
    return CopoSignals(local=local, global_=global_q[index], weight=w, entropy=h)


@register("advantage", "copo", paper=PAPER, arxiv="2508.04138",
          summary="COPO: entropy-blended local (GRPO) and global (cross-prompt) advantages")
def copo_advantage(rewards: torch.Tensor, *, group_size: int | None = None,
                   group_ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   answers: torch.Tensor | None = None, token_ids: torch.Tensor | None = None,
                   gamma: float = 20.0, rho: float = 0.5, blend: str = "soft",
                   entropy_coef: bool = False, eps: float = 1e-6
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """A_i = w_q A^loc_i + (1 − w_q) A^glob_q (B,); metrics add ``copo/local_weight``,
    ``copo/entropy`` (mean bits) and ``copo/global_adv_std``."""
    rewards = check_rewards(rewards)
    labels = answer_labels(rewards.shape[0], answers=answers, token_ids=token_ids, mask=mask,
                           rewards=rewards)
    sig = copo_signals(rewards, group_size=group_size, group_ids=group_ids, labels=labels,
                       gamma=gamma, rho=rho, blend=blend, entropy_coef=entropy_coef, eps=eps)
    advantages = sig.weight * sig.local + (1 - sig.weight) * sig.global_        # (B,)
    _, stats = group_normalize(rewards, group_size=group_size, group_ids=group_ids, eps=eps)
    metrics = advantage_metrics(advantages, None, stats)
    metrics.update({"copo/local_weight": float(sig.weight.mean()),
                    "copo/entropy": float(sig.entropy.mean()),
                    "copo/global_adv_std": float(sig.global_.std(unbiased=False))})
    return advantages, metrics


def copo_batch_inputs(rewards: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                      group_size: int | None = None, group_ids: torch.Tensor | None = None,
                      answers: torch.Tensor | None = None, token_ids: torch.Tensor | None = None,
                      gamma: float = 20.0, rho: float = 0.5, blend: str = "soft",
                      entropy_coef: bool = False, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """``{"global_advantages": A^glob (B,), "local_weights": w (B,), "consistency": H_q (B,)}`` from
    the full batch (the
    ``batch_inputs`` hook of ``policy_loss/copo``); ``advantages`` are the local ones."""
    rewards = check_rewards(rewards)
    mask_f = as_mask(mask)
    labels = answer_labels(mask_f.shape[0], answers=answers, token_ids=token_ids, mask=mask_f,
                           rewards=rewards)
    active = (expand_advantages(advantages, mask_f) != 0).any(-1)               # (B,)
    sig = copo_signals(rewards, group_size=group_size, group_ids=group_ids, labels=labels,
                       local_active=active, gamma=gamma, rho=rho, blend=blend,
                       entropy_coef=entropy_coef, eps=eps)
    return {"global_advantages": sig.global_, "local_weights": sig.weight, "consistency": sig.entropy}


@register("policy_loss", "copo", paper=PAPER, arxiv="2508.04138",
          summary="COPO: per-prompt entropy-weighted blend of the local and global clipped losses")
def copo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, *, rewards: torch.Tensor | None = None,
              group_size: int | None = None, group_ids: torch.Tensor | None = None,
              answers: torch.Tensor | None = None, token_ids: torch.Tensor | None = None,
              entropy: torch.Tensor | None = None, gamma: float = 20.0, rho: float = 0.5,
              blend: str = "soft", entropy_coef: bool = False, clip_eps_low: float = 0.2,
              clip_eps_high: float = 0.2, agg: str = "seq_mean_token_mean",
              norm: GlobalNorm | None = None, eps: float = 1e-6,
              global_advantages: torch.Tensor | None = None, local_weights: torch.Tensor | None = None,
              consistency: torch.Tensor | None = None, return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """``L = agg(w·pg(A^loc) + (1 − w)·pg(A^glob))`` with ``advantages`` as A^loc.

    Metrics add ``copo/local_weight`` (mean w), ``copo/global_adv_std``, ``copo/entropy`` (mean H_q)
    and ``copo/no_signal_frac``: the share of responses neither term trains (w·A^loc = 0 and
    (1 − w)·A^glob = 0), to set beside GRPO's ``adv_zero_frac``.

    Args:
        logprobs, old_logprobs, mask, entropy: as ``policy_loss/grpo``.
        advantages: the local advantages, (B,) or (B, T).
        rewards, group_size / group_ids: define the global advantage and the groups; without
            ``rewards`` the loss is the plain clipped loss on ``advantages`` (w = 1).
        answers, token_ids: the final answers (see :func:`answer_labels`).
        gamma, rho, blend, entropy_coef, eps: see the module docstring.
        global_advantages, local_weights: (B,) A^glob and w of each response computed on the full
            batch (:func:`copo_batch_inputs`); when both are given (with ``rewards``) they are used
            instead of recomputing them on the rows of this call (minibatches); ``consistency``
            (B,) H_q, only for the ``copo/entropy`` metric.
        clip_eps_low, clip_eps_high, agg, norm, return_per_token: as GRPO.
    """
    logprobs, mask_f, advantages, old_logprobs = prepare_policy_inputs(
        logprobs, old_logprobs, advantages, mask)
    rho_t = ratio(logprobs, old_logprobs)                                       # (B, T)
    adv_loc = expand_advantages(advantages, mask_f)                             # (B, T)
    pg_loc, regions = clipped_surrogate(rho_t, adv_loc, clip_eps_low, clip_eps_high)
    extra: dict[str, float] = {}
    if rewards is None:
        pg = pg_loc
    else:
        n = mask_f.shape[0]
        rewards = check_rewards(rewards)
        if global_advantages is not None and local_weights is not None:       # the full batch's
            check_tensor("global_advantages", global_advantages, shape=(n,), finite=True)
            check_tensor("local_weights", local_weights, shape=(n,), finite=True)
            global_q, weight, entropy_h = global_advantages, local_weights, consistency
        else:
            labels = answer_labels(n, answers=answers, token_ids=token_ids, mask=mask_f, rewards=rewards)
            active = (adv_loc != 0).any(-1)                                     # (B,)
            sig = copo_signals(rewards, group_size=group_size, group_ids=group_ids, labels=labels,
                               local_active=active, gamma=gamma, rho=rho, blend=blend,
                               entropy_coef=entropy_coef, eps=eps)
            global_q, weight, entropy_h = sig.global_, sig.weight, sig.entropy
        adv_glob = expand_advantages(global_q.to(adv_loc.dtype), mask_f)        # (B, T)
        pg_glob, _ = clipped_surrogate(rho_t, adv_glob, clip_eps_low, clip_eps_high)
        w = weight.to(pg_loc.dtype)[:, None]                                    # (B, 1)
        pg = w * pg_loc + (1 - w) * pg_glob
        # responses with no signal at all: w·A^loc = 0 and (1 − w)·A^glob = 0 (GRPO: A^loc = 0)
        rows = mask_f.bool().any(-1)
        silent = ((w[:, 0] * adv_loc.abs().amax(-1)).abs() <= 1e-8) & (((1 - w[:, 0]) * global_q.to(w.dtype)).abs() <= 1e-8)
        extra = {"copo/local_weight": float(weight.mean()) if n else 0.0,
                 "copo/global_adv_std": float(global_q.std(unbiased=False)) if n else 0.0,
                 "copo/no_signal_frac": float(silent[rows].float().mean()) if bool(rows.any()) else 0.0}
        if entropy_h is not None:
            extra["copo/entropy"] = float(entropy_h.mean()) if n else 0.0
    loss = aggregate(pg, mask_f, agg, norm)
    metrics = policy_metrics(mask_f, loss=loss, pg_loss=loss, ratio=rho_t, advantages=adv_loc,
                             regions=regions, logprobs=logprobs, old_logprobs=old_logprobs,
                             entropy=entropy)
    metrics.update(extra)
    if return_per_token:
        metrics["per_token_loss"] = pg.detach()
    return loss, metrics


copo_loss.batch_inputs = copo_batch_inputs

__all__ = ["BLENDS", "CopoSignals", "answer_labels", "consistency_entropy", "copo_signals",
           "copo_advantage", "copo_loss", "copo_batch_inputs"]
