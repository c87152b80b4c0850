"""DPO: the KL-regularized RLHF optimum fitted directly with a Bradley–Terry loss on preference pairs.

Paper: "Direct Preference Optimization: Your Language Model is Secretly a Reward Model", Rafailov
et al., arXiv 2305.18290. The catalog row cites "Unpacking DPO and PPO: Disentangling Best Practices
for Learning from Preference Feedback", Ivison et al., arXiv 2406.09279, which studies this loss
against PPO.

The loss: the optimum of ``max_π E[r] − β KL(π ‖ π_ref)`` is ``π*(y|x) ∝ π_ref(y|x) exp(r(x,y)/β)``,
so any policy defines an *implicit reward* ``r_θ = β log π_θ/π_ref`` (+ a prompt-only constant that
cancels in a pair). Fitting it to preferences by maximum likelihood under Bradley–Terry::

    z = (S_w − S_w^ref) − (S_l − S_l^ref)
    L = mean_P [ −log σ(β z) ]                        (loss_type="sigmoid")
      = mean_P [ −(1−ε) log σ(βz) − ε log σ(−βz) ]    (label_smoothing ε: cDPO, noisy labels)
      = mean_P [ relu(1 − βz) ]                        (loss_type="hinge")

where P is the number of pairs (x, y_w, y_l), S = Σ_t m_t ℓ_t the sequence log-prob of a response
under π_θ (ℓ_t the token log-probs, m_t the response mask), S^ref the same under the frozen
reference π_ref, w/l the chosen/rejected response, β > 0 the KL strength and σ the logistic
function. Intuition: the gradient ``−β σ(−βz) (∇S_w − ∇S_l)`` weights each pair by how wrongly the
implicit reward orders it. Nothing anchors S_w itself, only the difference: S_w can *fall* while
the margin grows (likelihood displacement, see :mod:`lab.preference.ranking`).

Where it departs from RLHF with PPO: no reward model and no rollouts; the policy's own log-ratio to
the reference is the reward, fitted offline on fixed pairs. It is the parent of the lab's other
pair losses (IPO changes the link, SimPO/AlphaPO the reward, Step-DPO the data).

Choices:
- ``label_smoothing`` is the cDPO/OpenRLHF form inside the sigmoid loss (TRL's ``"sigmoid"``
  ignores it); smoothing and hinge apply only one at a time.
- ``length_normalize=True`` uses S̄ = S/L in place of S (not in the paper; exposed for the
  notebook's comparison); default False, the paper's sums.
- Reference log-probs may be per token or precomputed sums (P,) (computed once, as TRL's
  ``precompute_ref_log_probs``); both give the same loss.
- An empty batch gives 0 with the graph kept; half-precision inputs are upcast to float32; padded
  positions may hold anything (−inf included) and are replaced by 0.
- Metrics: the implicit rewards r = β(S − S^ref) of the spec's Part F.3 (``reward_margin``,
  ``reward_acc``, ...).

Defaults: β = 0.1, ε = 0 (TRL). Identical chosen and rejected give z = 0, L = ln 2 and zero
gradient. Example (spec): β = 0.1, S_w = −10, S_l = −12, S_w^ref = S_l^ref = −11 → z = 2,
L = log(1 + e^{−0.2}) = 0.59814.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_positive
from lab.registry import register
from lab.preference.core import check_flag, log_ratios, mean_loss, pair_inputs, pair_loss, preference_metrics

PAPER = "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"


@register("preference_loss", "dpo", paper=PAPER, arxiv="2305.18290")
def dpo(chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, *, chosen_mask: torch.Tensor,
        rejected_mask: torch.Tensor, ref_chosen_logprobs: torch.Tensor | None = None,
        ref_rejected_logprobs: torch.Tensor | None = None, beta: float = 0.1, label_smoothing: float = 0.0,
        loss_type: str = "sigmoid", length_normalize: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """DPO loss ``mean −log σ(β[(S_w − S_w^ref) − (S_l − S_l^ref)])``; see the module docstring."""
    check_positive("beta", beta)
    check_flag("length_normalize", length_normalize)
    batch = pair_inputs(chosen_logprobs, rejected_logprobs, chosen_mask=chosen_mask, rejected_mask=rejected_mask,
                        ref_chosen_logprobs=ref_chosen_logprobs, ref_rejected_logprobs=ref_rejected_logprobs,
                        require_ref=True)
    chosen_ratio, rejected_ratio = log_ratios(batch, length_normalize)                   # (P,), (P,)
    # r = β (S − S^ref): implicit rewards;  z = r_w − r_l
    chosen_rewards, rejected_rewards = beta * chosen_ratio, beta * rejected_ratio
    per_pair = pair_loss(chosen_rewards - rejected_rewards, loss_type=loss_type, label_smoothing=label_smoothing)
    loss = mean_loss(per_pair, batch)
    return loss, preference_metrics(loss, chosen_rewards, rejected_rewards, batch)
