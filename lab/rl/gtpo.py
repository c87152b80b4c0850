"""GTPO: protect tokens shared by rewarded and penalized answers; filter high-entropy answers.

Paper: "GTPO: Trajectory-Based Policy Optimization in Large Language Models" (later version:
"GTPO: Stabilizing Group Relative Policy Optimization via Gradient and Entropy Control"),
Simoni et al., arXiv 2508.03772 (reference code: winstonsmith1897/GTPO, ``build_conflict_mask``,
``gtpo_compute_loss``).

The loss: conflict tokens. Within a group, P = {i : A_i > 0} and N = {i : A_i < 0}. Token v at position t
of a completion is a *forward* conflict if v sits at position t in some P and in some N completion
and every earlier position of that completion is a forward conflict too (the shared leading run,
e.g. a common format prefix); a *backward* conflict likewise counted from the last valid token
(the shared ending). GRPO pushes such a token up in P and down in N — a tug of war that can lower
the probability of exactly the structure every good answer needs. GTPO skips the negative update
and amplifies the positive one:

    λ_{i,t} = λ^fwd_{i,t}·λ^bwd_{i,t},   λ^dir = W (= 2) on a conflict in a P completion,
                                          0 on a conflict in an N completion, 1 otherwise.

Entropy filter. With ⟨H⟩_i the mean token entropy of completion i,
A_i ← 0 if ⟨H⟩_i > threshold (0.7 ≈ ln 2) else A_i − γ⟨H⟩_i (γ = 0.1): answers that have
drifted towards a flat distribution are not trained on (they would flatten it further).

    L = (1/B') Σ_i (1/L_i) Σ_t m_{i,t} · (−ρ_{i,t} · A_i · λ_{i,t}),   ρ = exp(ℓ − ℓ^old)

with B' the number of non-empty completions, L_i the length of completion i, m the token mask,
ℓ, ℓ^old the current and sampling log-probs (``seq_mean_token_mean``, no clipping, no KL, no
reference model). Example: group of 2,
o_1 = [5, 9, 7] (A = +1), o_2 = [5, 9, 8] (A = −1): forward conflicts at positions 0, 1 ->
λ_1 = [2, 2, 1], λ_2 = [0, 0, 1]; the last tokens differ, so the backward run is empty.

Where it departs from GRPO: per-token multipliers λ ∈ {0, 1, W} from the group's token grid, an
entropy filter/penalty on the advantage, no clipping and no KL.

Choices where the public material is ambiguous:
- Protection is guaranteed: on a conflict token the coefficient A_i·λ is clamped at ≥ 0. The code
  multiplies λ with A_i − γ⟨H⟩_i, which can turn slightly negative for a small positive A_i; the
  paper's rule is that conflict tokens are never pushed down, so the lab enforces it.
- P and N are taken from the advantages handed in (before the entropy adjustment), as the code.
- A token both in the forward and the backward run of a P completion gets W² (λ^fwd·λ^bwd, code).
- The code divides each completion's loss by its number of conflict tokens; that is not in the
  paper's formula and is off by default (``divide_by_conflicts``).
- The entropy rule: by default the code's (filter every completion with ⟨H⟩_i > 0.7). The paper's
  δ_i only filters when the *initial* model was confident (⟨H⟩_ini < ln 2 ≈ 0.7): pass
  ``initial_entropy``. A toy policy starting uniform (⟨H⟩_ini = ln V > 0.7) is filtered away entirely
  by the code's rule and learns nothing; with the paper's rule it is never filtered.
  ``entropy=None`` switches filter and penalty off.
- Off-policy epochs use the unclipped ratio ρ (the paper's objective has no clipping); pass
  ``clip_eps_low``/``clip_eps_high`` to clip anyway.
- Backward positions count valid tokens from the end, so padding (and holes in the mask) do not
  break the alignment.
- Conflicts are a property of the whole group: :func:`gtpo_batch_inputs` (the loss's
  ``batch_inputs`` hook, found by ``lab.rl.core.batch_hook``, which ``policy_optimization`` runs
  once on the full batch) finds them and every minibatch row carries its ``conflict_forward`` / ``conflict_backward`` runs. Called
  without them, the loss finds conflicts among the rows it is given.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_nonneg, check_positive, check_tensor
from lab.registry import register
from lab.rl.core import (
    kl_penalty,
    GlobalNorm, aggregate, check_per_token, clipped_surrogate, expand_advantages,
    group_index, masked_mean, masked_sum, policy_metrics, prepare_policy_inputs, ratio,
    as_mask, valid_values,
)

PAPER = "GTPO: Trajectory-Based Policy Optimization in Large Language Models"


def _shared_positions(keys: torch.Tensor, valid: torch.Tensor, positive: torch.Tensor,
                      negative: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the (group, position, token) key occurs in some P and some N completion."""
    keys_pos = keys[valid & positive[:, None]]
    keys_neg = keys[valid & negative[:, None]]
    return valid & torch.isin(keys, keys_pos) & torch.isin(keys, keys_neg)


def conflict_masks(token_ids: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                   group_size: int | None = None, group_ids: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forward, backward)`` conflict masks (B, T) bool: the shared leading / trailing runs."""
    check_tensor("token_ids", token_ids, ndim=2)
    if token_ids.is_floating_point():
        raise TypeError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    if token_ids.shape != mask.shape:
        raise ValueError(f"token_ids must have the shape of mask {tuple(mask.shape)}, "
                         f"got {tuple(token_ids.shape)}")
    n, T = mask.shape
    index, _ = group_index(n, group_size=group_size, group_ids=group_ids, device=mask.device)
    valid = mask.bool()
    seq_adv = advantages if advantages.dim() == 1 else masked_mean(advantages, valid, dim=-1)
    positive, negative = seq_adv > 0, seq_adv < 0
    vocab = int(token_ids.max()) + 1 if token_ids.numel() else 1
    ids = token_ids.long().clamp_min(0)
    # forward key: (group, position t, token v)
    position = torch.arange(T, device=mask.device).expand(n, T)
    fwd_keys = (index[:, None] * T + position) * vocab + ids
    # backward key: (group, s = number of valid tokens after t, token v)
    after = valid.flip(-1).long().cumsum(-1).flip(-1) - valid.long()
    bwd_keys = (index[:, None] * T + after) * vocab + ids
    fwd_shared = _shared_positions(fwd_keys, valid, positive, negative)
    bwd_shared = _shared_positions(bwd_keys, valid, positive, negative)
    # leading run: cumulative product over t, padding does not break it
    forward = torch.cumprod((fwd_shared | ~valid).long(), dim=-1).bool() & valid
    backward = torch.cumprod((bwd_shared | ~valid).long().flip(-1), dim=-1).flip(-1).bool() & valid
    return forward, backward


def conflict_weights(forward: torch.Tensor, backward: torch.Tensor, advantages: torch.Tensor,
                     *, conflict_weight: float = 2.0) -> torch.Tensor:
    """λ (B, T): W on conflicts of positive completions, 0 on those of negative ones, 1 elsewhere."""
    check_positive("conflict_weight", conflict_weight)
    seq_adv = advantages if advantages.dim() == 1 else advantages.mean(-1)
    on_conflict = torch.where(seq_adv > 0, torch.full_like(seq_adv, conflict_weight),
                              torch.where(seq_adv < 0, torch.zeros_like(seq_adv),
                                          torch.ones_like(seq_adv)))[:, None]   # (B, 1)
    lam_fwd = torch.where(forward, on_conflict, torch.ones_like(on_conflict))
    lam_bwd = torch.where(backward, on_conflict, torch.ones_like(on_conflict))
    return lam_fwd * lam_bwd


def entropy_adjusted_advantages(advantages: torch.Tensor, entropy: torch.Tensor,
                                mask: torch.Tensor, *, entropy_threshold: float = 0.7,
                                entropy_coef: float = 0.1, initial_entropy: float | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A', filtered (B,) bool)``: A' = 0 on filtered completions, else A − γ⟨H⟩_i.

    Filtered: ⟨H⟩_i > threshold (code rule, ``initial_entropy=None``); with the paper's rule,
    only when the initial model was confident (⟨H⟩_ini ≤ threshold) — δ_i of the README.
    """
    check_nonneg("entropy_threshold", entropy_threshold)
    check_nonneg("entropy_coef", entropy_coef)
    mean_h = masked_mean(entropy.detach(), mask, dim=-1)                        # (B,) ⟨H⟩_i
    filtered = (mean_h > entropy_threshold) & mask.bool().any(-1)
    if initial_entropy is not None and check_nonneg("initial_entropy", initial_entropy) > entropy_threshold:
        filtered = torch.zeros_like(filtered)                                   # δ_i = 1: no filter
    penalty = (entropy_coef * mean_h)[:, None] if advantages.dim() == 2 else entropy_coef * mean_h
    adjusted = advantages - penalty
    keep = ~filtered if advantages.dim() == 1 else ~filtered[:, None]
    return torch.where(keep, adjusted, torch.zeros_like(adjusted)), filtered


def gtpo_batch_inputs(advantages: torch.Tensor, mask: torch.Tensor, token_ids: torch.Tensor, *,
                      group_size: int | None = None, group_ids: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
    """``{"conflict_forward": (B, T), "conflict_backward": (B, T)}`` bool, found on the full batch
    (the ``batch_inputs`` hook of ``policy_loss/gtpo``)."""
    mask_f = as_mask(mask)
    adv = valid_values("advantages", advantages, mask_f if advantages.dim() == 2 else mask_f.bool().any(-1))
    forward, backward = conflict_masks(token_ids, adv, mask_f, group_size=group_size, group_ids=group_ids)
    return {"conflict_forward": forward, "conflict_backward": backward}


@register("policy_loss", "gtpo", paper=PAPER, arxiv="2508.03772",
          summary="Conflict-token protection (no negative, amplified positive update) + entropy filter")
def gtpo(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
         mask: torch.Tensor, *, token_ids: torch.Tensor, group_size: int | None = None,
         group_ids: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
         ref_logprobs: torch.Tensor | None = None, conflict_weight: float = 2.0,
         entropy_threshold: float = 0.7, entropy_coef: float = 0.1,
         initial_entropy: float | None = None, divide_by_conflicts: bool = False, clip_eps_low: float | None = None,
         clip_eps_high: float | None = None, beta: float = 0.0, kl_estimator: str = "k3",
         agg: str = "seq_mean_token_mean", norm: GlobalNorm | None = None,
         conflict_forward: torch.Tensor | None = None, conflict_backward: torch.Tensor | None = None,
         return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """GTPO loss ``agg(−ρ · c)`` with per-token coefficients ``c = A'_i·λ_{i,t}`` (≥ 0 on conflicts).

    Args:
        logprobs, old_logprobs, advantages, mask: as ``policy_loss/grpo`` (advantages (B,) or (B, T)).
        token_ids: (B, T) sampled token ids (conflicts are found on this grid).
        group_size, group_ids: the groups (exactly one of them).
        entropy: (B, T) token entropies for the entropy filter (None: no filter, no penalty).
        ref_logprobs, beta, kl_estimator: optional KL term (GTPO: none).
        conflict_weight: W, the amplification of conflict tokens in positive completions (2.0).
        entropy_threshold: completions with mean entropy above it are dropped (0.7 ≈ ln 2).
        entropy_coef: γ of A − γ⟨H⟩ (0.1).
        initial_entropy: ⟨H⟩_ini of the initial model for the paper's δ_i rule (no filtering at
            all when it exceeds the threshold); None = the code's rule (always filter).
        divide_by_conflicts: divide each completion's loss by max(#conflicts, 1) (code only).
        clip_eps_low, clip_eps_high: None (paper: no clipping) or a PPO clip range.
        agg, norm, return_per_token: aggregation (``seq_mean_token_mean`` as the paper's 1/|o_i|).
        conflict_forward, conflict_backward: (B, T) bool conflict runs found on the full batch
            (:func:`gtpo_batch_inputs`); when both are given they replace the search among the
            rows of this call (minibatches).

    Metrics add ``gtpo/conflict_frac`` (share of valid tokens in a conflict run),
    ``gtpo/protected_frac`` (share on negative completions, whose update is skipped),
    ``gtpo/filtered_frac`` (share of completions removed by the entropy filter); with
    ``return_per_token`` also ``conflict`` (B, T) bool and ``lambda`` (B, T).
    """
    logprobs, mask_f, advantages, old_logprobs = prepare_policy_inputs(
        logprobs, old_logprobs, advantages, mask)
    check_positive("beta", beta, allow_zero=True)
    valid = mask_f.bool()
    if conflict_forward is not None and conflict_backward is not None:      # the full batch's
        check_tensor("conflict_forward", conflict_forward, shape=tuple(mask_f.shape))
        check_tensor("conflict_backward", conflict_backward, shape=tuple(mask_f.shape))
        check_tensor("token_ids", token_ids, shape=tuple(mask_f.shape))
        forward, backward = conflict_forward.bool() & valid, conflict_backward.bool() & valid
    else:
        forward, backward = conflict_masks(token_ids, advantages, mask_f, group_size=group_size,
                                           group_ids=group_ids)
    conflict = forward | backward                                               # (B, T)
    lam = conflict_weights(forward, backward, advantages, conflict_weight=conflict_weight)
    filtered = torch.zeros(mask_f.shape[0], dtype=torch.bool, device=mask_f.device)
    adjusted = advantages
    if entropy is not None:
        entropy = check_per_token("entropy", entropy, logprobs.shape)
        adjusted, filtered = entropy_adjusted_advantages(
            advantages, entropy, mask_f, entropy_threshold=entropy_threshold,
            entropy_coef=entropy_coef, initial_entropy=initial_entropy)
    coef = expand_advantages(adjusted, mask_f) * lam                            # c = A'·λ (B, T)
    coef = torch.where(conflict, coef.clamp_min(0.0), coef)                     # never push conflicts down
    if divide_by_conflicts:
        n_conflict = masked_sum(conflict.to(coef.dtype), valid, dim=-1)          # (B,)
        coef = coef / n_conflict.clamp_min(1.0)[:, None]
    rho = ratio(logprobs, old_logprobs)                                          # (B, T)
    if clip_eps_low is None and clip_eps_high is None:
        pg, regions = -rho * coef, None                                          # no clipping
    else:
        pg, regions = clipped_surrogate(rho, coef, 0.2 if clip_eps_low is None else clip_eps_low,
                                        0.2 if clip_eps_high is None else clip_eps_high)
    pg_loss = aggregate(pg, mask_f, agg, norm)
    loss, per_token, kl_values = kl_penalty(pg, pg_loss, logprobs, ref_logprobs, mask_f, beta=beta,
                                            kl_estimator=kl_estimator, agg=agg, norm=norm)
    if regions is None:
        regions = {"low": torch.zeros_like(valid), "high": torch.zeros_like(valid)}
    metrics = policy_metrics(mask_f, loss=loss, pg_loss=pg_loss, ratio=rho,
                             advantages=expand_advantages(advantages, mask_f),
                             regions=regions, logprobs=logprobs, old_logprobs=old_logprobs,
                             kl=kl_values, entropy=entropy)
    seq_adv = advantages if advantages.dim() == 1 else masked_mean(advantages, valid, dim=-1)
    metrics["gtpo/conflict_frac"] = float(masked_mean(conflict.float(), valid))
    metrics["gtpo/protected_frac"] = float(masked_mean((conflict & (seq_adv < 0)[:, None]).float(), valid))
    rows = valid.any(-1)
    metrics["gtpo/filtered_frac"] = float(filtered[rows].float().mean()) if rows.any() else 0.0
    if return_per_token:
        metrics["per_token_loss"] = per_token.detach()
        metrics["conflict"], metrics["lambda"] = conflict, lam
    return loss, metrics


gtpo.batch_inputs = gtpo_batch_inputs

__all__ = ["conflict_masks", "conflict_weights", "entropy_adjusted_advantages", "gtpo", "gtpo_batch_inputs"]
