"""GRAO: group-relative exploration, imitation of a reference answer, and alignment to it.

Paper: "Learning to Align, Aligning to Learn: A Unified Approach for Self-Optimized Alignment"
(GRAO, Group Relative Alignment Optimization), Wang et al., arXiv 2508.07750, eqs. 2-4. No public code.

The objective: for a query q the model samples G answers o_1..o_G; a reference answer y (a demonstration) is
given. With length-normalized log-likelihoods

    J_expl(o) = (1/|o|) Σ_t log π_θ(o_t | q, o_<t),     J_imit(y) = (1/|y|) Σ_t log π_θ(y_t | q, y_<t)

and advantages normalized over the group of rewards {R(o_1), …, R(o_G), R(y)} (population std),

    Â_k = (R_k − μ_r) / σ_r,

(R the reward, μ_r and σ_r the mean and population std of those G + 1 rewards), GRAO maximizes

    J_GRAO = (1/G) Σ_i [ Â_{o_i}·J_expl(o_i) + β·Â_y·J_imit(y) + λ·Â_{o_i}·(J_expl(o_i) − J_imit(y)) ]

(loss = −J_GRAO; advantages detached; β = 0.5, λ = 0.6). The first term is group-relative RL on
the model's own samples (exploration), the second SFT on the reference weighted by how good the
reference is *relative to the samples* (imitation: strong when the model is still worse than y,
and reversed when the model's answers beat it), the third pushes each sample's likelihood above or
below the reference's according to its advantage (alignment, a pairwise-preference-like term).

Example: rewards o = [1, 0, 0.5], y = 1 -> over 4 values μ = 0.625, σ = 0.4146,
Â_o = [0.905, −1.508, −0.302], Â_y = 0.905; with J_expl = [−1, −2, −1.5], J_imit = −1.2:
J = 0.607, loss = −0.607.

Limits: β = λ = 0 (with statistics over the samples only) is REINFORCE on the group-normalized
advantage with the length-normalized log-likelihood, i.e. GRPO's ``seq_mean_token_mean`` gradient
at ρ ≡ 1 with population std; λ alone moves samples relative to the reference.

Where it departs from GRPO: no ratio, no clipping and no KL term; a reference answer enters both
the reward statistics and the loss (imitation and alignment terms).

Choices where the paper is ambiguous:
- Whether R(y) enters μ_r, σ_r: eq. 4 writes sums over G, the text includes y. The lab includes it
  (``include_reference=True``); ``False`` uses the samples only (Â_y is then normalized by the
  samples' statistics).
- The text once describes the imitation term as βÂ_{o_i}·J_imit(o_i), contradicting eq. 3; the lab
  implements eq. 3.
- σ_r = 0 (all G + 1 rewards equal): the paper gives no eps; eps = 1e-6 makes every Â = 0, loss 0.
- The reference answer of each prompt arrives as ``demo_logprobs`` / ``demo_mask`` (one row per
  prompt, the names HPT's demonstrations use, so one training loop feeds both). Its reward
  ``ref_reward`` defaults to 1.0: on a verifiable task the reference answer is correct.
- The ``advantages`` argument of the loss convention is not used: GRAO needs its own statistics
  over {samples, reference}; ``old_logprobs`` only feed the ``ratio_*`` metrics (no ratio in the
  objective). Without ``demo_logprobs`` the β and λ terms vanish (pure exploration term).
- Minibatches: Â_o and Â_y are group statistics, so they are computed once on the full batch by
  :func:`grao_batch_inputs` (the loss's ``batch_inputs`` hook, found by ``lab.rl.core.batch_hook``,
  which ``policy_optimization`` runs before splitting the batch) and reach each minibatch row as
  ``sample_advantages`` / ``reference_advantages``; a minibatch holding part of a group then trains exactly as the full
  batch would (recomputing them on the partial group moved Â from 1.016 to 0.816 in one case).
- ``lab.experiments.policy_optimization`` runs GRAO by name; with ``demonstrations=True`` it scores
  each prompt's reference answer (``task.targets``) and all three terms train, without it only the
  exploration term does (with R(y) = 1 still in the statistics).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_nonneg, check_tensor
from lab.registry import register
from lab.rl.core import (
    advantage_metrics, as_mask, check_per_token, check_rewards, group_index, group_stats,
    policy_metrics, prepare_policy_inputs, ratio, sequence_logprobs,
)

PAPER = "Learning to Align, Aligning to Learn: A Unified Approach for Self-Optimized Alignment"


def grao_advantages(rewards: torch.Tensor, ref_reward: float | torch.Tensor, *,
                    group_size: int | None = None, group_ids: torch.Tensor | None = None,
                    include_reference: bool = True, eps: float = 1e-6
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Â_o (B,), Â_y (n_groups,), index (B,))``: population-std normalization per group.

    With ``include_reference`` the statistics of each group are over its G rewards and R(y).
    """
    rewards = check_rewards(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    check_nonneg("eps", eps)
    index, n_groups = group_index(rewards.shape[0], group_size=group_size, group_ids=group_ids,
                                  device=rewards.device)
    ref = torch.as_tensor(ref_reward, dtype=rewards.dtype, device=rewards.device)
    ref = ref.expand(n_groups) if ref.dim() == 0 else ref
    check_tensor("ref_reward", ref, shape=(n_groups,), finite=True)
    ref_ids = torch.arange(n_groups, device=rewards.device)
    if include_reference:
        stats = group_stats(torch.cat([rewards, ref]), group_ids=torch.cat([index, ref_ids]),
                            std="population")
        mean, std = stats.mean, stats.std                                       # (B + n_groups,)
        mean_o, std_o, mean_y, std_y = mean[:-n_groups], std[:-n_groups], mean[-n_groups:], std[-n_groups:]
    else:
        stats = group_stats(rewards, group_ids=index, std="population")
        mean_o, std_o = stats.mean, stats.std
        mean_y = rewards.new_zeros(n_groups).scatter_(0, index, mean_o)
        std_y = rewards.new_zeros(n_groups).scatter_(0, index, std_o)
    # Â = (R − μ_r) / σ_r
    adv_o = (rewards - mean_o) / (std_o + eps)
    adv_y = (ref - mean_y) / (std_y + eps)
    return adv_o, adv_y, index


def grao_batch_inputs(rewards: torch.Tensor, *, group_size: int | None = None,
                      group_ids: torch.Tensor | None = None, ref_reward: float | torch.Tensor = 1.0,
                      include_reference: bool = True, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """``{"sample_advantages": Â_o (B,), "reference_advantages": Â_y of each response's group (B,)}``
    from the full batch (the ``batch_inputs`` hook of ``policy_loss/grao``)."""
    adv_o, adv_y, index = grao_advantages(rewards, ref_reward, group_size=group_size, group_ids=group_ids,
                                          include_reference=include_reference, eps=eps)
    return {"sample_advantages": adv_o, "reference_advantages": adv_y[index]}


@register("policy_loss", "grao", paper=PAPER, arxiv="2508.07750",
          summary="GRAO: group-relative exploration + advantage-weighted imitation and alignment")
def grao(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
         mask: torch.Tensor, *, rewards: torch.Tensor, group_size: int | None = None,
         group_ids: torch.Tensor | None = None, demo_logprobs: torch.Tensor | None = None,
         demo_mask: torch.Tensor | None = None, ref_reward: float | torch.Tensor = 1.0,
         entropy: torch.Tensor | None = None, imitation_coef: float = 0.5, lam: float = 0.6,
         include_reference: bool = True, eps: float = 1e-6,
         sample_advantages: torch.Tensor | None = None,
         reference_advantages: torch.Tensor | None = None,
         return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """``−J_GRAO`` averaged over the B sampled answers (one group of G per prompt).

    Args:
        logprobs: (B, T) log-probs of the sampled answers, with grad.
        old_logprobs: (B, T) or None; only for the ``ratio_*`` metrics.
        advantages: unused (GRAO normalizes {samples, reference} itself; kept for the convention).
        mask: (B, T) answer tokens.
        rewards: (B,) rewards of the samples.
        group_size, group_ids: the groups (exactly one of them).
        demo_logprobs: (n_prompts, T_y) log-probs of each prompt's reference answer, with grad.
        demo_mask: (n_prompts, T_y) reference-answer tokens (default: all valid).
        ref_reward: R(y), a number or (n_prompts,) (default 1.0: a correct reference).
        entropy: (B, T), reported only.
        imitation_coef: β of the paper, weight of the imitation term (0.5). Named apart from the
            KL coefficient ``beta`` of the other losses.
        lam: λ, weight of the alignment term (0.6).
        include_reference: R(y) enters the group statistics (True, see module docstring).
        eps: added to σ_r.
        sample_advantages, reference_advantages: (B,) Â_o of each answer and Â_y of its group,
            computed on the full batch (:func:`grao_batch_inputs`); when both are given they are
            used instead of recomputing the statistics from ``rewards`` (minibatches).
        return_per_token: also return ``per_token_loss`` (B, T): each answer's term
            −(exploration + imitation + alignment)_i spread evenly over its tokens (the mean over
            answers of the row sums is the loss).

    Metrics: the policy metrics (``clip_frac`` = 0: nothing is clipped), ``grao/adv_ref_mean``
    (Â_y), ``grao/imitation_logprob`` (J_imit), ``grao/exploration``, ``grao/imitation``,
    ``grao/alignment`` (the three terms of J).
    """
    check_nonneg("imitation_coef", imitation_coef)
    check_nonneg("lam", lam)
    logprobs, mask_f, _, old_logprobs = prepare_policy_inputs(
        logprobs, old_logprobs, advantages, mask)
    n = logprobs.shape[0]
    if sample_advantages is not None and reference_advantages is not None:
        # the full batch's group statistics (a minibatch may hold part of a group)
        check_tensor("sample_advantages", sample_advantages, shape=(n,), finite=True)
        check_tensor("reference_advantages", reference_advantages, shape=(n,), finite=True)
        check_rewards(rewards)
        index, n_groups = group_index(n, group_size=group_size, group_ids=group_ids, device=logprobs.device)
        adv_o = sample_advantages
        adv_y = torch.zeros(n_groups, dtype=reference_advantages.dtype,
                            device=reference_advantages.device).scatter_(0, index, reference_advantages)
    else:
        adv_o, adv_y, index = grao_advantages(rewards, ref_reward, group_size=group_size,
                                              group_ids=group_ids, include_reference=include_reference,
                                              eps=eps)
    if adv_o.shape[0] != n:
        raise ValueError(f"rewards must have one entry per row of logprobs ({n}), got {adv_o.shape[0]}")
    j_expl = sequence_logprobs(logprobs, mask_f, normalize=True)                # (B,)
    if demo_logprobs is not None:
        check_tensor("demo_logprobs", demo_logprobs, ndim=2, dtype_kind="float")
        demo_m = torch.ones_like(demo_logprobs) if demo_mask is None else \
            as_mask(demo_mask, demo_logprobs, "demo_mask")
        if demo_logprobs.shape[0] != adv_y.shape[0]:
            raise ValueError(f"demo_logprobs must have one row per prompt ({adv_y.shape[0]}), "
                             f"got {tuple(demo_logprobs.shape)}")
        demo_lp = check_per_token("demo_logprobs", demo_logprobs, demo_m.shape, demo_m)
        j_imit = sequence_logprobs(demo_lp, demo_m, normalize=True)[index]       # (B,) J_imit(y_g(i))
        imit_w, align_w = imitation_coef, lam
    else:
        j_imit = torch.zeros_like(j_expl)
        imit_w, align_w = 0.0, 0.0
    a_o, a_y = adv_o.detach(), adv_y.detach()[index]                            # (B,)
    # J_i = Â_o·J_expl(o_i) + β·Â_y·J_imit(y) + λ·Â_o·(J_expl(o_i) − J_imit(y))
    exploration = a_o * j_expl
    imitation = imit_w * a_y * j_imit
    alignment = align_w * a_o * (j_expl - j_imit)
    # mean over the B answers; an empty batch gives 0 with the graph kept
    loss = -(exploration + imitation + alignment).sum() / max(exploration.shape[0], 1)
    rho = ratio(logprobs, old_logprobs)
    no_clip = {"low": torch.zeros_like(mask_f, dtype=torch.bool),
               "high": torch.zeros_like(mask_f, dtype=torch.bool)}
    metrics = policy_metrics(mask_f, loss=loss, pg_loss=loss, ratio=rho, regions=no_clip,
                             logprobs=logprobs, old_logprobs=old_logprobs, entropy=entropy)
    metrics.update(advantage_metrics(a_o, mask_f))
    metrics.update({"grao/adv_ref_mean": float(adv_y.mean()),
                    "grao/imitation_logprob": float(j_imit.detach().mean()),
                    "grao/exploration": float(exploration.detach().mean()),
                    "grao/imitation": float(imitation.detach().mean()),
                    "grao/alignment": float(alignment.detach().mean())})
    if return_per_token:
        per_seq = -(exploration + imitation + alignment).detach()               # (B,)
        lengths = mask_f.sum(-1).clamp_min(1.0)
        metrics["per_token_loss"] = (per_seq / lengths)[:, None] * mask_f
    return loss, metrics


grao.batch_inputs = grao_batch_inputs

__all__ = ["grao", "grao_advantages", "grao_batch_inputs"]
