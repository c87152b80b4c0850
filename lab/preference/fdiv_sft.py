"""f-divergence SFT: SFT read as implicit-reward learning, and SFT objectives from other f-divergences.

Paper: "Implicit Reward as the Bridge: A Unified View of SFT and DPO Connections", Wang et al.,
arXiv 2507.00018. No public code; the paper's specific losses and its learning-rate factor are not
recoverable from the public summary, so this module is a *documented template* built from the
paper's stated idea (every choice below is the lab's and says so).

The paper's view. A policy defines the implicit reward r_θ(x,y) = β log π_θ(y|x)/π_ref(y|x) (DPO's).
SFT on demonstrations y ∼ P_data is distribution matching, and its KL-to-reference term is
*constant in θ*, so nothing constrains how far SFT moves from π_ref. Remedies named by the paper:
(a) a smaller SFT learning rate; (b) SFT objectives from other f-divergences that keep a
policy-dependent term.

The objective: the lab's instantiation of (b), the variational (Nguyen–Wainwright–Jordan) bound

    D_f(P_data ‖ π_ref) ≥ sup_T  E_{y∼P_data}[T(y)] − E_{y∼π_ref}[f*(T(y))]

with the critic tied to the implicit reward through the density ratio u_θ = π_θ/π_ref = exp(r_θ/β):
T = f'(u_θ) (the optimal critic is f'(P_data/π_ref), so the maximizer is π_θ = P_data for every f).
With sequence-level log-ratios log u = S − S^ref (S = Σ_t m_t ℓ_t the response's log-prob under
π_θ, S^ref under π_ref), f a convex function with f(1) = 0 and f* its convex conjugate, the loss is
minus the bound::

    divergence   f(u)                       E_data term  f'(u)        E_ref term f*(f'(u))
    kl           u log u                    1 + log u                  u   (E_ref[u] = 1: constant)
    reverse_kl   −log u                     −1/u                       log u − 1
    pearson      (u − 1)²                   2(u − 1)                   u² − 1
    hellinger    (√u − 1)²                  1 − u^{−1/2}               √u − 1
    js           u log u − (u+1)log((u+1)/2) log σ(log u) + log 2      −log σ(−log u) − log 2

    L = −E_data[f'(u)] + E_ref[f*(f'(u))]

Intuition: for ``hellinger`` and ``js`` the data-term weight ∂f'(u)/∂log u (u^{−1/2}/2, σ(−log u))
*decays* once a demonstration is more likely under π_θ than under π_ref, so the pull saturates,
unlike NLL's constant weight 1.

Anchor (the one testable fact): for ``kl`` the reference term is E_{π_ref}[π_θ/π_ref] = 1 for every
θ (the constant KL term of the paper), so L = −mean(S − S^ref) − 1 + 1, i.e. the sequence NLL up to a
constant: the gradient equals SFT's with ``agg="seq_mean_token_sum"``. For the other f the E_ref
term depends on θ and needs responses sampled from π_ref (``ref_sample_*``: their log-probs under
π_θ with grad and under π_ref), averaged with optional ``ref_sample_weights`` (e.g. exact
probabilities when all responses can be enumerated).

Where it departs from SFT: the data term f'(u) replaces the log-likelihood, and (except for ``kl``)
a reference-sample term E_ref[f*(f'(u))] pulls π_θ back on what π_ref generates.

Choices:
- Sequence-level ratios (not per token).
- log u clamped to ±20 before exp (as :func:`lab.rl.core.ratio`).
- β only scales the reported implicit reward (the bound is β-free).
- For ``kl`` the E_ref term is the constant 1 exactly (no samples needed).
- ``ref_sample_weights`` are normalized to sum 1 (uniform by default).
- The learning-rate reduction is a training choice, exposed as ``lr_factor`` of the experiment
  ``sft_divergences`` (default 1 = no reduction; the paper's factor is not public, the notebook
  suggests 0.1).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from lab.checks import check_choice, check_positive, check_tensor
from lab.registry import register
from lab.rl.core import LOG_RATIO_CLAMP, as_float, as_mask, check_detached, sequence_logprobs, valid_values

DIVERGENCES: tuple[str, ...] = ("kl", "reverse_kl", "pearson", "hellinger", "js")


def data_term(log_u: torch.Tensor, divergence: str) -> torch.Tensor:
    """f'(u) per demonstration (B,), from log u = S − S^ref."""
    if divergence == "kl":
        return 1.0 + log_u
    if divergence == "reverse_kl":
        return -torch.exp(-log_u)
    if divergence == "pearson":
        return 2.0 * torch.expm1(log_u)
    if divergence == "hellinger":
        return -torch.expm1(-0.5 * log_u)
    return F.logsigmoid(log_u) + math.log(2.0)                       # js


def ref_term(log_u: torch.Tensor, divergence: str) -> torch.Tensor:
    """f*(f'(u)) per reference sample (N,)."""
    if divergence == "kl":
        return torch.exp(log_u)
    if divergence == "reverse_kl":
        return log_u - 1.0
    if divergence == "pearson":
        return torch.expm1(2.0 * log_u)
    if divergence == "hellinger":
        return torch.expm1(0.5 * log_u)
    return -F.logsigmoid(-log_u) - math.log(2.0)                     # js


def _log_ratio(name: str, ref_name: str, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
               mask: torch.Tensor, mask_name: str = "mask") -> torch.Tensor:
    """Sequence log-ratio log u = S − S^ref (B,), clamped to ±20."""
    check_tensor(name, logprobs, ndim=2, dtype_kind="float")
    check_tensor(ref_name, ref_logprobs, ndim=(1, 2), dtype_kind="float")
    check_detached(ref_name, ref_logprobs)
    logprobs = as_float(logprobs)
    mask_f = as_mask(mask, logprobs, mask_name)
    logprobs = valid_values(name, logprobs, mask_f)                            # padding -> 0
    ref = as_float(ref_logprobs)
    if ref.shape not in (logprobs.shape, logprobs.shape[:1]):
        raise ValueError(f"{ref_name} must have shape {tuple(logprobs.shape)} or ({logprobs.shape[0]},), "
                         f"got {tuple(ref_logprobs.shape)}")
    ref = valid_values(ref_name, ref, mask_f if ref.dim() == 2 else torch.ones_like(ref, dtype=torch.bool))
    ref_seq = ref if ref.dim() == 1 else sequence_logprobs(ref, mask_f)
    return (sequence_logprobs(logprobs, mask_f) - ref_seq).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@register("preference_loss", "fdiv_sft", paper="Implicit Reward as the Bridge: A Unified View of SFT and DPO "
          "Connections", arxiv="2507.00018")
def fdiv_sft(logprobs: torch.Tensor, mask: torch.Tensor, *, ref_logprobs: torch.Tensor,
             divergence: str = "kl", beta: float = 0.1, ref_sample_logprobs: torch.Tensor | None = None,
             ref_sample_ref_logprobs: torch.Tensor | None = None, ref_sample_mask: torch.Tensor | None = None,
             ref_sample_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Minus the variational f-divergence bound with the implicit-reward critic (module docstring).

    Args:
        logprobs, mask: (B, T) demonstrations' token log-probs under π_θ (with grad) and mask.
        ref_logprobs: (B, T) or (B,) sums, the demonstrations under π_ref (detached).
        divergence: one of :data:`DIVERGENCES`.
        beta: β of the reported implicit reward β (S − S^ref).
        ref_sample_logprobs, ref_sample_ref_logprobs, ref_sample_mask: (N, T') responses sampled from
            π_ref, scored by π_θ (with grad) and π_ref; required unless ``divergence="kl"``.
        ref_sample_weights: (N,) non-negative weights of the E_ref average (default uniform).
    """
    check_choice("divergence", divergence, DIVERGENCES)
    check_positive("beta", beta)
    log_u = _log_ratio("logprobs", "ref_logprobs", logprobs, ref_logprobs, mask)                  # (B,)
    data = data_term(log_u, divergence).mean() if len(log_u) else log_u.sum() * 0.0
    samples = (ref_sample_logprobs, ref_sample_ref_logprobs, ref_sample_mask)
    if divergence != "kl" and any(s is None for s in samples):
        raise ValueError(f"divergence={divergence!r} needs ref_sample_logprobs, ref_sample_ref_logprobs and "
                         "ref_sample_mask (responses sampled from the reference policy)")
    log_u_ref = None
    if all(s is not None for s in samples):           # validated even when KL does not need them
        log_u_ref = _log_ratio("ref_sample_logprobs", "ref_sample_ref_logprobs", ref_sample_logprobs,
                               ref_sample_ref_logprobs, ref_sample_mask, "ref_sample_mask")  # (N,)
    if divergence == "kl":
        ref = torch.ones((), dtype=data.dtype)        # E_{π_ref}[π_θ/π_ref] = 1 exactly, for every θ
    else:
        if ref_sample_weights is None:
            weights = torch.full_like(log_u_ref, 1.0 / max(len(log_u_ref), 1))
        else:
            check_tensor("ref_sample_weights", ref_sample_weights, shape=(len(log_u_ref),), finite=True,
                         dtype_kind="float")
            if (ref_sample_weights < 0).any() or float(ref_sample_weights.sum()) <= 0:
                raise ValueError("ref_sample_weights must be non-negative with a positive sum")
            weights = as_float(ref_sample_weights.detach()) / ref_sample_weights.sum()
        ref = (weights * ref_term(log_u_ref, divergence)).sum()
    # L = −E_data[f'(u)] + E_ref[f*(f'(u))]
    loss = -data + ref
    metrics = {"loss": float(loss.detach()), "fdiv/data_term": float(data.detach()),
               "fdiv/ref_term": float(ref.detach()),
               "implicit_reward": float(beta * log_u.detach().mean()) if len(log_u) else 0.0,
               "chosen_logps": float(sequence_logprobs(as_float(logprobs).detach(),
                                                       as_mask(mask, logprobs)).mean()) if len(log_u) else 0.0}
    return loss, metrics
