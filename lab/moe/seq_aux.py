"""Sequence-wise balance loss (DeepSeek-V3): the Switch product per sequence, with a tiny weight.

Paper: "DeepSeek-V3 Technical Report", DeepSeek-AI, arXiv 2412.19437 (the complementary
sequence-wise auxiliary loss).

The loss: for one sequence of T tokens, E routed experts, k experts per token, scores
``s_{t,i}`` (sigmoid in DeepSeek-V3, softmax here by default) and chosen experts S_t::

    s'_{t,i} = s_{t,i} / sum_j s_{t,j}                      normalised affinity
    P_i      = (1/T) sum_t s'_{t,i}
    f_i      = E / (k T) * sum_t 1[i in S_t]                 dispatch share, 1 when balanced
    L_Bal    = alpha * sum_i f_i P_i                         averaged over the sequences of a batch

with alpha = ``coef`` (DeepSeek-V3: 1e-4). Balanced routing (f_i = 1, P_i = 1/E) gives
``L_Bal = alpha``. Intuition: one sequence that sends all its tokens to one expert is penalised even
when the batch as a whole is balanced.

Where it departs from the Switch aux loss (``switch_aux``): the statistics are per *sequence*, not
per batch, the affinities are renormalised scores, and alpha is tiny, because DeepSeek-V3 balances
the batch with the loss-free bias (``aux_free_bias``) and only wants to stop extreme sequences.

Choices:
- ``indices`` are the actual (bias-selected, possibly group-limited) choices, so f counts the real
  dispatch (the report does not say otherwise; an [unverified] reading).
- Scores default to softmax; ``score_fn="sigmoid"`` gives DeepSeek-V3's (s' renormalises them over
  all experts). :func:`lab.moe.hf.attach` scores with the sigmoid on a sigmoid router.
- Shapes: ``router_logits (..., S, E)``: every axis in front of the sequence axis S indexes a
  sequence (``(B, S, E)`` is B sequences, ``(L, B, S, E)`` the B sequences of L stacked layers);
  ``(T, E)`` is one sequence. Several layers are pooled like every sequence of the batch: the loss
  is the mean over all (layer, sequence) pairs, i.e. the mean of the per-layer losses (Hugging Face
  has no sequence-wise loss; DeepSeek's own code adds one loss per layer, which is ``n_layers``
  times this - scale ``coef`` accordingly).
- ``attention_mask (..., S)`` (1 = real token) restricts T to a sequence's real tokens; a sequence
  without real tokens is left out of the mean, and a batch without any gives exactly 0 (a finite,
  documented result instead of a division by zero).
- The metric ``seq_max_violation`` is the mean over sequences of ``max_i f_i − 1``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lab.checks import check_choice, check_int, check_nonneg
from lab.moe.router import SCORE_FNS, check_routing, scores_from_logits, token_mask
from lab.registry import register


def seq_aux_loss(router_logits: torch.Tensor, indices: torch.Tensor, score_fn: str = "softmax",
                 attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``mean_b sum_i f_{b,i} P_{b,i}`` (no coefficient) over the sequences b, and the per-sequence stats."""
    e = check_routing(router_logits, indices, None)
    if router_logits.dim() == 2:
        router_logits, indices = router_logits.unsqueeze(0), indices.unsqueeze(0)
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask.unsqueeze(0)
    lead = router_logits.shape[:-2]
    s_len, k = indices.shape[-2], indices.shape[-1]
    b = math.prod(lead)  # sequences
    scores = scores_from_logits(router_logits, score_fn).reshape(b, s_len, e)  # (B, S, E)
    mask = token_mask(attention_mask, router_logits.shape[:-1], scores)  # (..., S) or None
    m = (torch.ones(b, s_len, dtype=scores.dtype, device=scores.device) if mask is None
         else mask.reshape(b, s_len))  # (B, S)
    n_real = m.sum(-1)  # (B,) real tokens per sequence
    # s' = s / sum_j s_j ;  P_{b,i} = mean over the real tokens t of s'_{t,i}
    p_seq = ((scores / scores.sum(-1, keepdim=True)) * m.unsqueeze(-1)).sum(1) / n_real.clamp_min(1.0).unsqueeze(-1)
    # f_{b,i} = E / (k T_b) * #{t real : i in S_t}
    counts = torch.zeros(b, e, dtype=scores.dtype, device=scores.device)
    counts.scatter_add_(1, indices.reshape(b, s_len * k), m.repeat_interleave(k, dim=1))
    f_seq = counts * (e / k) / n_real.clamp_min(1.0).unsqueeze(-1)  # (B, E)
    # L_Bal (per sequence) = sum_i f_i P_i ; averaged over the sequences with real tokens
    has = (n_real > 0).to(scores.dtype)  # (B,)
    loss = ((f_seq * p_seq).sum(-1) * has).sum() / has.sum().clamp_min(1.0)
    return loss, {"f_seq": f_seq.detach().reshape(*lead, e), "P_seq": p_seq.detach().reshape(*lead, e),
                  "has_tokens": (n_real > 0).reshape(lead)}


@register("balancer", "seq_aux", paper="DeepSeek-V3 Technical Report", arxiv="2412.19437",
          summary="Sequence-wise balance loss alpha * sum_i f_i P_i per sequence")
class SeqAux:
    """DeepSeek-V3 sequence-wise balance loss ``coef * mean_seq sum_i f_i P_i``.

    Args:
        n_experts: E, checked against the router logits.
        coef: alpha, the loss coefficient (DeepSeek-V3: 1e-4).
        score_fn: how the router turns logits into scores, ``"softmax"`` or ``"sigmoid"``
            (DeepSeek-V3); s' is the scores renormalized over all experts.
    """

    def __init__(self, n_experts: int, *, coef: float = 1e-4, score_fn: str = "softmax"):
        self.n_experts = check_int("n_experts", n_experts, minimum=1)
        self.coef = check_nonneg("coef", coef)
        self.score_fn = check_choice("score_fn", score_fn, SCORE_FNS)

    def loss(self, router_logits: torch.Tensor, indices: torch.Tensor,
             attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """``coef * mean_seq sum_i f_i P_i`` over every sequence (of every stacked layer)."""
        check_routing(router_logits, indices, self.n_experts)
        raw, stats = seq_aux_loss(router_logits, indices, self.score_fn, attention_mask)
        has = stats["has_tokens"].reshape(-1)
        vio = stats["f_seq"].reshape(-1, self.n_experts).max(-1).values - 1.0  # f_i = load_i / mean load
        seq_vio = (vio * has).sum() / has.sum().clamp_min(1)
        return self.coef * raw, {"seq_aux": raw.detach(), "seq_max_violation": seq_vio}

    def __repr__(self) -> str:
        return f"SeqAux(n_experts={self.n_experts}, coef={self.coef}, score_fn={self.score_fn!r})"


__all__ = ["SeqAux", "seq_aux_loss"]
