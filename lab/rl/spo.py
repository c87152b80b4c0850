"""SPO: segment policy optimization (SPO-chain and SPO-tree advantages, probability-mask loss).

Paper: "Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large
Language Models", Guo et al., arXiv 2505.23564 (code: AIFrameResearch/SPO, built on VinePPO).

Credit assignment at segment granularity: cut a response into segments, estimate the value of the
state at each cut by Monte Carlo (MC) rollouts of the policy from that prefix (no critic), and
give every token of a segment the value difference across it.

The estimators: SPO-chain (``advantage/spo_chain``), for response y with old token probabilities
p_t = π_old(y_t):

    cut points   P = {t − 1 : p_t < ρ}  (the state *before* each uncertain token), then every
                 ``interval``-th element of P kept: c_1 < c_2 < … < c_K
    values       V(c) = mean reward of N MC completions from the prefix y_{≤c}  (``cut_values``),
                 V(−1) = the prompt's value (``prompt_values``), V(L−1) = R (the final reward)
    advantages   A_t = V(c_k) − V(c_{k−1})  for c_{k−1} < t ≤ c_k   (last segment ends at L−1 with R)
                 A_t = 0 for t ≤ c_1 (no earlier state has a value), and
                 A_t = 0 where p_t ≥ ρ  (only uncertain tokens carry credit)

SPO-tree (``advantage/spo_tree``): responses are the leaves of a sampling tree of depth D whose
nodes are fixed-length segments; siblings share their parent prefix. V(node) = mean reward of the
leaves below it (V(root) = the group mean), and every token of the segment `parent -> child` gets

    A = V(child) − V(parent)                               (adv_method = "rloo", default)
    A = (V(child) − V(parent)) / (std of sibling values + eps)   (adv_method = "grpo")

so the same rollouts that train the policy also estimate the values: MC cost is shared.

Probability-mask loss (``policy_loss/spo``): the PPO-clip loss of ``lab.rl.core`` restricted to the
uncertain tokens, mask ← mask ∧ (π_old(y_t) < ρ).

Where it departs from GRPO: advantages are per segment (token-level, (B, T)) instead of one per
response, come from MC values instead of group statistics, and the loss only trains tokens whose
old probability is below ρ.

Choices (spec; [unverified] marks guesses): ρ = ``prob_threshold`` = 0.9 (hard-coded in the
code); ``interval`` = 5 (the "int5" configuration), keeping P's elements 0, interval, 2·interval…
[unverified which ones]; a cut at −1 (token 0 uncertain) is used only when ``prompt_values`` are
given, otherwise dropped; the probability mask uses the strict p < ρ in both the advantages and
the loss; the tree's sibling std is unbiased with eps 1e-8 [unverified]; zero-advantage tree edges
are kept with A = 0 (the code drops them, which only changes denominators); a segment shared by
several leaves appears in each leaf's row (use :func:`first_visit_mask` to train it once).

Where to run it: ``policy_loss/spo`` runs in ``policy_optimization`` by name (with any estimator).
The segment advantages need MC values from response *prefixes*, which that loop does not sample
(``advantage/spo_chain`` there raises a TypeError naming ``cut_values``); the experiment
``segment_advantages`` (``lab.experiments.segments``) samples them, compares the variance of
segment and token-level MC advantages at an equal rollout budget, and counts tree vs chain tokens.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_choice, check_int, check_positive, check_range, check_tensor
from lab.registry import register
from lab.rl.core import (GlobalNorm, advantage_metrics, as_float, as_mask, check_per_token,
                         check_rewards, check_token_inputs, clipped_policy_loss, group_stats,
                         prepare_policy_inputs)

PAPER = ("Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large "
         "Language Models")
ARXIV = "2505.23564"
ADV_METHODS: tuple[str, ...] = ("rloo", "grpo")


def uncertain_tokens(old_logprobs: torch.Tensor, mask: torch.Tensor,
                     prob_threshold: float = 0.9) -> torch.Tensor:
    """(B, T) bool: valid tokens whose old probability is below ρ (the probability mask)."""
    check_range("prob_threshold", prob_threshold, 0.0, 1.0, lo_open=True)
    return mask.bool() & (as_float(old_logprobs).exp() < prob_threshold)


def spo_cut_points(old_logprobs: torch.Tensor, mask: torch.Tensor, *, prob_threshold: float = 0.9,
                   interval: int = 5) -> list[list[int]]:
    """Cut points of each row: ``t − 1`` for uncertain tokens t, every ``interval``-th kept.

    A cut ``c`` names the state after token c (the prefix y_{≤c}); ``−1`` is the prompt.
    """
    interval = check_int("interval", interval, minimum=1)
    low = uncertain_tokens(old_logprobs, mask, prob_threshold)
    return [[int(t) - 1 for t in row.nonzero().flatten()][::interval] for row in low]


@register("advantage", "spo_chain", paper=PAPER, arxiv=ARXIV,
          summary="SPO-chain: segment advantages from MC values at low-probability cut points")
def spo_chain(rewards: torch.Tensor, *, old_logprobs: torch.Tensor, mask: torch.Tensor,
              cut_values: torch.Tensor, prompt_values: torch.Tensor | None = None,
              prob_threshold: float = 0.9, interval: int = 5
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Token advantages (B, T) of SPO-chain.

    Args:
        rewards: (B,) final rewards R (the value of the last state).
        old_logprobs: (B, T) log-probs of the sampled tokens under the sampling policy.
        mask: (B, T) response tokens.
        cut_values: (B, T) MC value V(c) of the prefix y_{≤c}; read only at the cut points
            (:func:`spo_cut_points`), other entries may be anything (e.g. NaN).
        prompt_values: (B,) V of the prompt state, used when a cut falls at −1.
        prob_threshold: ρ of the probability mask.
        interval: keep every interval-th cut point.
    """
    rewards = check_rewards(rewards)
    check_tensor("old_logprobs", old_logprobs, ndim=2, dtype_kind="float")
    mask_b = as_mask(mask, old_logprobs).bool()
    old_logprobs = check_per_token("old_logprobs", old_logprobs, tuple(old_logprobs.shape), mask_b)
    cut_values = check_per_token("cut_values", cut_values, tuple(old_logprobs.shape))
    if rewards.shape != old_logprobs.shape[:1]:
        raise ValueError(f"rewards must have shape ({old_logprobs.shape[0]},), got {tuple(rewards.shape)}")
    if prompt_values is not None:
        check_tensor("prompt_values", prompt_values, shape=(old_logprobs.shape[0],), finite=True)
    cuts = spo_cut_points(old_logprobs, mask_b, prob_threshold=prob_threshold, interval=interval)
    advantages = torch.zeros(old_logprobs.shape, dtype=rewards.dtype, device=rewards.device)           # (B, T)
    for i, row_cuts in enumerate(cuts):
        valid = mask_b[i].nonzero().flatten()
        if valid.numel() == 0:
            continue
        last = int(valid[-1])
        states: list[tuple[int, float]] = []                                    # (position, value)
        for c in row_cuts:
            if c < 0:
                if prompt_values is not None:
                    states.append((c, float(prompt_values[i])))
                continue
            value = float(cut_values[i, c])
            if value != value or abs(value) == float("inf"):
                raise ValueError(f"cut_values[{i}, {c}] must be finite at a cut point, got {value}")
            states.append((c, value))
        states.append((last, float(rewards[i])))
        # A_t = V(c_k) − V(c_{k−1}) for c_{k−1} < t ≤ c_k
        for (c_prev, v_prev), (c_next, v_next) in zip(states[:-1], states[1:]):
            advantages[i, c_prev + 1:c_next + 1] = v_next - v_prev
    keep = uncertain_tokens(old_logprobs, mask_b, prob_threshold)
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    metrics = advantage_metrics(advantages, mask_b)
    metrics["spo/cuts_per_response"] = sum(len(c) for c in cuts) / max(len(cuts), 1)
    metrics["spo/prob_mask_frac"] = float(keep.sum() / mask_b.sum().clamp_min(1))
    return advantages, metrics


def _check_tree(node_ids: torch.Tensor, n: int) -> None:
    check_tensor("node_ids", node_ids, ndim=2)
    if node_ids.is_floating_point() or node_ids.shape[0] != n:
        raise ValueError(f"node_ids must be an integer tensor of shape ({n}, D), got "
                         f"{node_ids.dtype} {tuple(node_ids.shape)}")
    for d in range(1, node_ids.shape[1]):
        pairs = torch.unique(node_ids[:, d - 1:d + 1], dim=0)
        if pairs.shape[0] != torch.unique(node_ids[:, d]).numel():
            raise ValueError(f"node_ids: a node at depth {d} has more than one parent; node ids "
                             "must identify a node uniquely within each depth")


@register("advantage", "spo_tree", paper=PAPER, arxiv=ARXIV,
          summary="SPO-tree: segment advantages V(child) − V(parent) on a sampling tree")
def spo_tree(rewards: torch.Tensor, *, node_ids: torch.Tensor, segment_ids: torch.Tensor,
             mask: torch.Tensor, group_size: int | None = None,
             group_ids: torch.Tensor | None = None, adv_method: str = "rloo", eps: float = 1e-8
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Token advantages (B, T) of SPO-tree; each row is one leaf (a root-to-leaf response).

    Args:
        rewards: (B,) leaf rewards.
        node_ids: (B, D) integer id of the node (segment) at each depth on the row's path; an id
            identifies one node within its depth across the batch.
        segment_ids: (B, T) depth 0..D−1 of the segment each token belongs to.
        mask: (B, T) response tokens.
        group_size / group_ids: the tree (root) of each leaf.
        adv_method: ``"rloo"`` (value difference) or ``"grpo"`` (divided by the sibling std).
        eps: added to the sibling std.
    """
    rewards = check_rewards(rewards)
    check_choice("adv_method", adv_method, ADV_METHODS)
    check_positive("eps", eps, allow_zero=True)
    n = rewards.shape[0]
    _check_tree(node_ids, n)
    check_tensor("segment_ids", segment_ids, shape=tuple(mask.shape))
    if segment_ids.is_floating_point():
        raise TypeError(f"segment_ids must be an integer tensor, got {segment_ids.dtype}")
    mask_b = as_mask(mask).bool()
    depth = node_ids.shape[1]
    if mask_b.any() and (segment_ids[mask_b].min() < 0 or segment_ids[mask_b].max() >= depth):
        raise ValueError(f"segment_ids must lie in [0, {depth}) on valid tokens")
    root = group_stats(rewards, group_size=group_size, group_ids=group_ids)
    parent_value, parent_key = root.mean, root.index                            # (B,), (B,)
    edge_adv = rewards.new_zeros(n, depth)                       # (B, D)
    for d in range(depth):
        # V(node) = mean reward of the leaves below it
        child = group_stats(rewards, group_ids=node_ids[:, d])
        diff = child.mean - parent_value                                        # (B,)
        if adv_method == "grpo":
            # std of the sibling values: one value per distinct child, grouped by parent
            uniq, inv = torch.unique(node_ids[:, d], return_inverse=True)
            first = torch.zeros(uniq.numel(), dtype=torch.long, device=inv.device).scatter_(
                0, inv, torch.arange(n, device=inv.device))
            siblings = group_stats(child.mean[first], group_ids=parent_key[first])
            diff = diff / (siblings.std[inv] + eps)
        edge_adv[:, d] = diff
        parent_value, parent_key = child.mean, node_ids[:, d]
    seg = segment_ids.clamp(0, depth - 1).long()
    advantages = torch.where(mask_b, edge_adv.gather(1, seg), rewards.new_zeros(()))
    metrics = advantage_metrics(advantages, mask_b)
    metrics["spo/edges_zero_frac"] = float((edge_adv == 0).to(torch.float32).mean())
    return advantages, metrics


def first_visit_mask(node_ids: torch.Tensor, segment_ids: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: a shared tree segment's tokens kept only in the first row that contains it."""
    _check_tree(node_ids, mask.shape[0])
    keep_node = torch.zeros(node_ids.shape, dtype=torch.bool, device=node_ids.device)                   # (B, D)
    for d in range(node_ids.shape[1]):
        _, inv = torch.unique(node_ids[:, d], return_inverse=True)
        first = torch.full((int(inv.max()) + 1,), node_ids.shape[0], dtype=torch.long, device=inv.device)
        first = first.scatter_reduce(0, inv, torch.arange(node_ids.shape[0], device=inv.device), "amin")
        keep_node[:, d] = first[inv] == torch.arange(node_ids.shape[0], device=inv.device)
    seg = segment_ids.clamp(0, node_ids.shape[1] - 1).long()
    return mask.bool() & keep_node.gather(1, seg)


@register("policy_loss", "spo", paper=PAPER, arxiv=ARXIV,
          summary="SPO probability-mask loss: PPO-clip on tokens with π_old < ρ only")
def spo(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
        mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None, prob_threshold: float = 0.9,
        clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, beta: float = 0.0,
        kl_estimator: str = "k3", agg: str = "token_mean", norm: GlobalNorm | None = None,
        return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """PPO-clip loss on ``mask ∧ (exp(old_logprobs) < prob_threshold)``; metric
    ``spo/prob_mask_frac`` (share of valid tokens that train). Other arguments as GRPO."""
    # validate on the full mask: a NaN on a token the probability mask drops is still an error
    logprobs, mask_f, advantages, old = prepare_policy_inputs(logprobs, old_logprobs, advantages, mask)
    extra = check_token_inputs(mask_f, tuple(logprobs.shape), ref_logprobs=ref_logprobs,
                               entropy=entropy)
    keep = uncertain_tokens(old, mask_f, prob_threshold)                        # (B, T)
    loss, metrics = clipped_policy_loss(
        logprobs, old, advantages, keep, ref_logprobs=extra["ref_logprobs"], entropy=extra["entropy"],
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, beta=beta,
        kl_estimator=kl_estimator, agg=agg, norm=norm, return_per_token=return_per_token)
    total = mask_f.sum()
    metrics["spo/prob_mask_frac"] = float(keep.sum() / total) if total > 0 else 0.0
    return loss, metrics


__all__ = ["ADV_METHODS", "first_visit_mask", "spo", "spo_chain", "spo_cut_points", "spo_tree",
           "uncertain_tokens"]
