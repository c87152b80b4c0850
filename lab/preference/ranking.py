"""Ranking accuracy: how often a model ranks the chosen response above the rejected one, vs its ideal.

Paper: "Preference Learning Algorithms Do Not Learn Preference Rankings", Chen et al., arXiv
2405.19534 (reference code: angie-chen55/pref-learning-ranking-acc). Likelihood displacement and
CHES: "Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization", Razin
et al., arXiv 2410.08847.

The metric::

    R(π) = (1/N) Σ_n 1[S_w > S_l]           (``length_normalize``: 1[S̄_w > S̄_l])
    log π*(y_w)/π*(y_l) = (S^ref_w − S^ref_l) + (1/β) log(α_n / (1 − α_n))
    R* = (1/N) Σ_n 1[ S^ref_w − S^ref_l + (1/β) log(α_n/(1−α_n)) > 0 ]

where N is the number of pairs, S = Σ_t m_t ℓ_t the sequence log-prob of the chosen (w) or rejected
(l) response under π (S̄ = S/L length-normalized), S^ref the same under the reference, β the KL
strength of the RLHF/DPO objective and α_n = P(y_w ≻ y_l) the annotators' share preferring y_w.
R* (the *idealized* ranking accuracy) is that of the exact optimum
π*(y|x) ∝ π_ref(y|x) exp(r*(x,y)/β) with the Bradley–Terry reward whose preference probability is
α_n. Intuition: a reference that misranks a pair by a wide margin stays wrong even at the optimum
unless (1/β)·logit(α) beats it; and a trained model falls short of R* on the pairs its reference
misranks: DPO ranks a pair correctly iff L_DPO(pair) < −log σ(β(S^ref_l − S^ref_w))
(:func:`ranking_loss_threshold`), a low loss that a badly misranked pair reaches only after long
training (the paper reports real DPO models far below R*; on the lab's toy, whose responses are
short, the gap shows on the misranked pairs, see ``preference_training``).

Where it departs from DPO's ``reward_acc``: DPO's metric compares implicit rewards β(S − S^ref), this
one compares the likelihoods themselves (what generation uses); it is a metric, no gradient.

Choices:
- Ties count as wrong: a pair is right iff S_w − S_l > ``tie_tol`` (default 0, strict; the paper's
  repository marks a tie within a ratio of 1 ± 0.05, here ``tie_tol`` on the log scale).
- α clipped to [1e-3, 1 − 1e-3] (the repository's eps), so unanimous pairs stay finite.
- The idealized margin always uses sums S (the optimum is a statement about whole-sequence
  probabilities), whatever ``length_normalize`` says.

Example (spec): β = 0.1, α = 0.8, S^ref_w − S^ref_l = −15 → −15 + 10 ln 4 = −1.137 < 0; the pair
needs L_DPO < −log σ(1.5) = 0.20141.

Likelihood displacement: during DPO-like training the loss falls and the margin grows while
mean_n log π(y_w) *falls*: probability moves to other responses. Metric:
D_t = mean_n (S_w^(t) − S_w^(0)) (< 0: displacement). CHES (centered hidden embedding similarity)
predicts it from the last hidden states h_k that predict each token, S_h(y) = Σ_k h_k::

    CHES(y_w, y_l) = ⟨S_h(y_w), S_h(y_l)⟩ − ‖S_h(y_w)‖²      (higher: more displacement)
    length-normalized: ⟨S_h(y_w), S_h(y_l)⟩/(|y_w||y_l|) − ‖S_h(y_w)‖²/|y_w|²
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_nonneg, check_positive, check_range, check_tensor
from lab.registry import register
from lab.rl.core import as_float, as_mask
from lab.preference.core import check_flag, pair_inputs, pair_scores


def idealized_margin(ref_chosen_scores: torch.Tensor, ref_rejected_scores: torch.Tensor,
                     pref_prob: torch.Tensor, *, beta: float = 0.1, eps: float = 1e-3) -> torch.Tensor:
    """log π*(y_w)/π*(y_l) = (S^ref_w − S^ref_l) + (1/β) log(α/(1−α)) per pair (N,)."""
    check_positive("beta", beta)
    check_range("eps", eps, 0.0, 0.5, lo_open=True, hi_open=True)
    check_tensor("pref_prob", pref_prob, shape=(len(ref_chosen_scores),), finite=True, dtype_kind="float")
    if ((pref_prob < 0) | (pref_prob > 1)).any():
        raise ValueError("pref_prob must lie in [0, 1] (the share of annotators preferring y_w)")
    alpha = as_float(pref_prob).clamp(eps, 1.0 - eps)
    return (ref_chosen_scores - ref_rejected_scores) + torch.logit(alpha) / beta


def ranking_loss_threshold(ref_chosen_scores: torch.Tensor, ref_rejected_scores: torch.Tensor, *,
                           beta: float = 0.1) -> torch.Tensor:
    """The DPO loss a pair must go below to be ranked correctly: −log σ(β (S^ref_l − S^ref_w)), (N,)."""
    check_positive("beta", beta)
    return -torch.nn.functional.logsigmoid(beta * (ref_rejected_scores - ref_chosen_scores))


@register("preference_loss", "ranking_accuracy", paper="Preference Learning Algorithms Do Not Learn Preference "
          "Rankings", arxiv="2405.19534")
def ranking_accuracy(chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, *, chosen_mask: torch.Tensor,
                     rejected_mask: torch.Tensor, ref_chosen_logprobs: torch.Tensor | None = None,
                     ref_rejected_logprobs: torch.Tensor | None = None, pref_prob: torch.Tensor | None = None,
                     beta: float = 0.1, length_normalize: bool = False,
                     tie_tol: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Ranking accuracy of π (a metric, no gradient) and, given the reference and α, its idealized value.

    Returns ``(accuracy, metrics)`` with ``ranking_accuracy``, ``ranking_correct`` (N,) bool, and
    with references ``ref_ranking_accuracy``; with ``pref_prob`` also ``idealized_ranking_accuracy``
    and ``idealized_correct`` (N,). The idealized margin always uses sums S (the optimum is a
    statement about whole-sequence probabilities), whatever ``length_normalize`` says.
    """
    check_flag("length_normalize", length_normalize)
    check_nonneg("tie_tol", tie_tol)
    batch = pair_inputs(chosen_logprobs.detach(), rejected_logprobs.detach(), chosen_mask=chosen_mask,
                        rejected_mask=rejected_mask, ref_chosen_logprobs=ref_chosen_logprobs,
                        ref_rejected_logprobs=ref_rejected_logprobs)
    margin = (pair_scores(batch.chosen_logprobs, batch.chosen_mask, length_normalize)
              - pair_scores(batch.rejected_logprobs, batch.rejected_mask, length_normalize))   # (N,)
    correct = margin > tie_tol
    accuracy = correct.float().mean() if len(correct) else torch.zeros(())
    metrics: dict[str, Any] = {"ranking_accuracy": float(accuracy), "ranking_correct": correct,
                               "tie_frac": float((margin.abs() <= tie_tol).float().mean()) if len(margin) else 0.0}
    if batch.ref_chosen_logprobs is not None and batch.ref_rejected_logprobs is not None:
        ref_w = pair_scores(batch.ref_chosen_logprobs, batch.chosen_mask)
        ref_l = pair_scores(batch.ref_rejected_logprobs, batch.rejected_mask)
        ref_margin = (pair_scores(batch.ref_chosen_logprobs, batch.chosen_mask, length_normalize)
                      - pair_scores(batch.ref_rejected_logprobs, batch.rejected_mask, length_normalize))
        metrics["ref_ranking_accuracy"] = float((ref_margin > tie_tol).float().mean()) if len(margin) else 0.0
        if pref_prob is not None:
            ideal = idealized_margin(ref_w, ref_l, pref_prob, beta=beta) > tie_tol
            metrics["idealized_correct"] = ideal
            metrics["idealized_ranking_accuracy"] = float(ideal.float().mean()) if len(ideal) else 0.0
    elif pref_prob is not None:
        raise ValueError("the idealized ranking accuracy needs ref_chosen_logprobs and ref_rejected_logprobs")
    return accuracy, metrics


def likelihood_displacement(chosen_logps: Any) -> torch.Tensor:
    """D_t = mean_n (S_w^(t) − S_w^(0)) from chosen sequence log-probs over training.

    ``chosen_logps``: (steps, N) per pair, or (steps,) already averaged over pairs. Returns (steps,);
    D_t < 0 means the chosen responses became less likely than at the start (displacement).
    """
    device = chosen_logps.device if isinstance(chosen_logps, torch.Tensor) else "cpu"   # lists: CPU
    x = torch.as_tensor(chosen_logps, dtype=torch.float64, device=device)
    if x.dim() not in (1, 2) or x.shape[0] == 0:
        raise ValueError(f"chosen_logps must be a non-empty (steps,) or (steps, N) array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("chosen_logps contains NaN or Inf")
    mean = x if x.dim() == 1 else x.mean(-1)
    return mean - mean[0]


def ches_score(chosen_hidden: torch.Tensor, rejected_hidden: torch.Tensor, *, chosen_mask: torch.Tensor,
               rejected_mask: torch.Tensor, length_normalize: bool = False) -> torch.Tensor:
    """CHES per pair (N,) from hidden states (N, T, D) of the positions predicting each response token."""
    check_flag("length_normalize", length_normalize)
    check_tensor("chosen_hidden", chosen_hidden, ndim=3, dtype_kind="float")
    check_tensor("rejected_hidden", rejected_hidden, ndim=3, dtype_kind="float")
    m_w = as_mask(chosen_mask, chosen_hidden[..., 0], "chosen_mask")
    m_l = as_mask(rejected_mask, rejected_hidden[..., 0], "rejected_mask")
    h_w = (as_float(chosen_hidden) * m_w[..., None]).sum(1)                 # (N, D) S_h(y_w)
    h_l = (as_float(rejected_hidden) * m_l[..., None]).sum(1)               # (N, D) S_h(y_l)
    cross, own = (h_w * h_l).sum(-1), (h_w * h_w).sum(-1)
    if not length_normalize:
        return cross - own
    len_w, len_l = m_w.sum(-1).clamp_min(1.0), m_l.sum(-1).clamp_min(1.0)
    return cross / (len_w * len_l) - own / len_w ** 2


__all__ = ["ranking_accuracy", "idealized_margin", "ranking_loss_threshold", "likelihood_displacement",
           "ches_score"]
