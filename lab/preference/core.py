"""The shared pieces of every preference loss: one home each (DPO, IPO, SimPO, AlphaPO, Step-DPO).

Notation (``spec/policy_losses.md``, Part C). A batch holds ``P`` pairs ``(x, y_w, y_l)``: the
chosen (``w``) and rejected (``l``) responses to one prompt ``x``. Per response

    S   = Σ_t m_t ℓ_t              sequence log-prob log π_θ(y|x)      (``chosen_mask`` / ``rejected_mask``)
    S̄   = S / L,  L = Σ_t m_t      length-normalized log-prob ("average log-prob")
    S^ref, S̄^ref                   the same for the frozen reference π_ref

A preference loss turns a per-pair *logit* ``z`` (how much more the model rewards ``y_w`` than
``y_l``) into a Bradley–Terry likelihood, ``P(y_w ≻ y_l) = σ(z)``:

    sigmoid      L = −(1−ε) log σ(z) − ε log σ(−z)           (ε = ``label_smoothing``, cDPO)
    hinge        L = relu(1 − z)                              (SLiC-style)

The methods differ only in the *reward* whose difference forms ``z``:

    DPO / Step-DPO   r = β (S − S^ref)                         implicit reward, z = r_w − r_l
    IPO              h = (S_w − S_w^ref) − (S_l − S_l^ref),    L = (h − 1/(2τ))²   (a regression, not BT)
    SimPO            r = β S̄,  z = r_w − r_l − γ                reference-free, target margin γ
    AlphaPO          r = β (1 − π̄^{−α})/α,  π̄ = exp(S̄)         SimPO's log reward bent by α

Pieces here: :func:`pair_inputs` (shape checks; per-token tensors with masks, reference
log-probs per token or as precomputed sums (P,)), :func:`pair_scores` (S or S̄ per response, via
:func:`lab.rl.core.sequence_logprobs`), :func:`implicit_reward`, :func:`pair_loss` (the two link
functions above, with label smoothing), :func:`alpha_reward` (AlphaPO's shape; α = 0 is the log
reward exactly) and :func:`preference_metrics` (the Part F.3 names ``reward_margin``,
``reward_acc``, ``chosen_reward``, ``rejected_reward``, ``chosen_logps``, ``rejected_logps``).

Empty responses (L = 0) have S = 0 and S̄ = 0 (the length is clamped to ≥ 1, as SimPO needs).
Reference log-probs must be detached; everything is computed in float32 or wider.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lab.checks import check_choice, check_number, check_positive, check_range, check_tensor
from lab.rl.core import as_float, as_mask, check_detached, sequence_logprobs

LOSS_TYPES: tuple[str, ...] = ("sigmoid", "hinge")


@dataclass(frozen=True)
class PairBatch:
    """Validated per-token inputs of one batch of pairs (all float, masks as float)."""

    chosen_logprobs: torch.Tensor          # (P, T_w), with grad
    rejected_logprobs: torch.Tensor        # (P, T_l), with grad
    chosen_mask: torch.Tensor              # (P, T_w)
    rejected_mask: torch.Tensor            # (P, T_l)
    ref_chosen_logprobs: torch.Tensor | None    # (P, T_w) or (P,) sums, detached
    ref_rejected_logprobs: torch.Tensor | None  # (P, T_l) or (P,) sums, detached


def pair_inputs(chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, *,
                chosen_mask: torch.Tensor, rejected_mask: torch.Tensor,
                ref_chosen_logprobs: torch.Tensor | None = None,
                ref_rejected_logprobs: torch.Tensor | None = None,
                require_ref: bool = False) -> PairBatch:
    """Check shapes, dtypes and detachment; upcast half precision to float32.

    Policy log-probs are (P, T) per token (T may differ between chosen and rejected); reference
    log-probs are either per token (same shape) or precomputed sequence sums (P,).
    """
    check_tensor("chosen_logprobs", chosen_logprobs, ndim=2, dtype_kind="float")
    check_tensor("rejected_logprobs", rejected_logprobs, ndim=2, dtype_kind="float")
    if chosen_logprobs.shape[0] != rejected_logprobs.shape[0]:
        raise ValueError(f"chosen_logprobs and rejected_logprobs must hold the same number of pairs, got "
                         f"{chosen_logprobs.shape[0]} and {rejected_logprobs.shape[0]}")
    chosen, rejected = as_float(chosen_logprobs), as_float(rejected_logprobs)
    mask_w = as_mask(chosen_mask, chosen, "chosen_mask")
    mask_l = as_mask(rejected_mask, rejected, "rejected_mask")
    refs = []
    for name, ref, like in (("ref_chosen_logprobs", ref_chosen_logprobs, chosen),
                            ("ref_rejected_logprobs", ref_rejected_logprobs, rejected)):
        if ref is None:
            if require_ref:
                raise ValueError(f"{name} is required (the loss compares the policy with a reference)")
            refs.append(None)
            continue
        check_tensor(name, ref, ndim=(1, 2), dtype_kind="float")
        check_detached(name, ref)
        if ref.shape not in (like.shape, like.shape[:1]):
            raise ValueError(f"{name} must have shape {tuple(like.shape)} (per token) or ({like.shape[0]},) "
                             f"(sequence sums), got {tuple(ref.shape)}")
        refs.append(as_float(ref))
    return PairBatch(chosen, rejected, mask_w, mask_l, refs[0], refs[1])


def pair_scores(logprobs: torch.Tensor, mask: torch.Tensor, length_normalize: bool = False) -> torch.Tensor:
    """S = Σ_t m ℓ (P,), or S̄ = S / max(L, 1) with ``length_normalize``.

    ``logprobs`` may already be sequence sums (P,): then only the division by L applies.
    """
    if logprobs.dim() == 1:
        return logprobs / mask.sum(-1).clamp_min(1.0) if length_normalize else logprobs
    return sequence_logprobs(logprobs, mask, normalize=length_normalize)


def log_ratios(batch: PairBatch, length_normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair policy-to-reference log-ratios (S_w − S_w^ref, S_l − S_l^ref), each (P,).

    With ``length_normalize`` each log-ratio is divided by its response length (IPO as TRL).
    """
    if batch.ref_chosen_logprobs is None or batch.ref_rejected_logprobs is None:
        raise ValueError("ref_chosen_logprobs and ref_rejected_logprobs are required")
    chosen = (pair_scores(batch.chosen_logprobs, batch.chosen_mask, length_normalize)
              - pair_scores(batch.ref_chosen_logprobs, batch.chosen_mask, length_normalize))
    rejected = (pair_scores(batch.rejected_logprobs, batch.rejected_mask, length_normalize)
                - pair_scores(batch.ref_rejected_logprobs, batch.rejected_mask, length_normalize))
    return chosen, rejected


def implicit_reward(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, *,
                    beta: float = 0.1, length_normalize: bool = False) -> torch.Tensor:
    """The implicit reward of DPO and of SFT-as-reward-learning: r = β (S − S^ref), (B,).

    Example: S = −3, S^ref = −4, β = 0.1 gives r = 0.1.
    """
    check_positive("beta", beta)
    check_tensor("logprobs", logprobs, ndim=(1, 2), dtype_kind="float")
    check_tensor("ref_logprobs", ref_logprobs, ndim=(1, 2), dtype_kind="float")
    mask_f = as_mask(mask, None, "mask")
    return beta * (pair_scores(as_float(logprobs), mask_f, length_normalize)
                   - pair_scores(as_float(ref_logprobs), mask_f, length_normalize))


def alpha_reward(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """AlphaPO's reward shape of a length-normalized log-prob S̄: (1 − exp(−α S̄)) / α.

    Computed as ``−expm1(−α S̄)/α`` (accurate for small α); α = 0 is the log reward S̄ exactly.
    dr/dS̄ = exp(−α S̄) = π̄^{−α}: α > 0 weights unlikely responses more, α < 0 likely ones.
    """
    alpha = check_number("alpha", alpha)
    if alpha == 0.0:
        return scores
    return -torch.expm1(-alpha * scores) / alpha


def pair_loss(logits: torch.Tensor, *, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss (P,) of a Bradley–Terry logit z: sigmoid (label-smoothed) or hinge."""
    check_choice("loss_type", loss_type, LOSS_TYPES)
    eps = check_range("label_smoothing", label_smoothing, 0.0, 0.5)
    if loss_type == "hinge":
        if eps:
            raise ValueError("label_smoothing applies to loss_type='sigmoid' only")
        return torch.relu(1.0 - logits)
    # −(1−ε) log σ(z) − ε log σ(−z), with the stable log-sigmoid
    return -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


def check_flag(name: str, value: Any) -> bool:
    """A real bool (``length_normalize`` and friends)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def preference_metrics(loss: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       batch: PairBatch) -> dict[str, float]:
    """The Part F.3 metrics: rewards are the method's (implicit) rewards, logps the sums S."""
    r_w, r_l = chosen_rewards.detach(), rejected_rewards.detach()
    s_w = pair_scores(batch.chosen_logprobs.detach(), batch.chosen_mask)
    s_l = pair_scores(batch.rejected_logprobs.detach(), batch.rejected_mask)
    return {"loss": float(loss.detach()),
            "reward_margin": float((r_w - r_l).mean()) if len(r_w) else 0.0,
            "reward_acc": float((r_w > r_l).float().mean()) if len(r_w) else 0.0,
            "chosen_reward": float(r_w.mean()) if len(r_w) else 0.0,
            "rejected_reward": float(r_l.mean()) if len(r_l) else 0.0,
            "chosen_logps": float(s_w.mean()) if len(s_w) else 0.0,
            "rejected_logps": float(s_l.mean()) if len(s_l) else 0.0,
            "num_pairs": float(len(r_w))}


def mean_loss(per_pair: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Mean over pairs; an empty batch gives 0 with the graph kept."""
    if per_pair.numel() == 0:
        return batch.chosen_logprobs.sum() * 0.0
    return per_pair.mean()


__all__ = ["LOSS_TYPES", "PairBatch", "pair_inputs", "pair_scores", "log_ratios", "implicit_reward",
           "alpha_reward", "pair_loss", "check_flag", "preference_metrics", "mean_loss"]
