"""Step-DPO: DPO on single reasoning steps instead of whole answers.

Paper: "Step-DPO: Step-wise Preference Optimization for Long-chain Reasoning of LLMs", Lai et al.,
arXiv 2406.18629 (reference code: dvlab-research/Step-DPO, a subclass of TRL's ``DPOTrainer``).

The loss: take a problem x, a correct chain of initial steps s_1 … s_{k−1}, and at step k a correct
next step s_win and the first erroneous step s_lose. The prompt becomes x' = x ⊕ s_1 ⊕ … ⊕ s_{k−1}
and the loss is DPO's, unchanged, on the step pair::

    z = (S(s_win|x') − S^ref(s_win|x')) − (S(s_lose|x') − S^ref(s_lose|x'))
    L = mean_P [ −log σ(β z) ]

where S(s|x') = Σ_t m_t ℓ_t is the log-prob of step s given the prefix under π_θ, S^ref the same
under the frozen reference, P the number of step pairs, β > 0 the KL strength and σ the logistic
function. Intuition: a whole-answer preference says *that* a solution is wrong, not *where*; the
step pair localizes the error.

Where it departs from DPO: in the *data*, not the loss — the released trainer only changes the
tokenization (prompt = problem + initial steps, prompt tokens masked). An empty prefix (k = 1) is
plain DPO on the first step.

Choices:
- Default β = 0.5 (the released Qwen2-7B script; 0.4 in the 72B scripts, 0.05 in
  ``config_full.yaml``); all other arguments are DPO's (:func:`lab.preference.dpo.dpo`).
- The step-wise toy data are built by :func:`toy_envs.preferences.step_pairs`: the prompt holds the
  problem and the correct prefix, chosen/rejected hold one step each.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.registry import register
from lab.preference.dpo import dpo


@register("preference_loss", "step_dpo", paper="Step-DPO: Step-wise Preference Optimization for Long-chain "
          "Reasoning of LLMs", arxiv="2406.18629")
def step_dpo(chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, *, chosen_mask: torch.Tensor,
             rejected_mask: torch.Tensor, ref_chosen_logprobs: torch.Tensor | None = None,
             ref_rejected_logprobs: torch.Tensor | None = None, beta: float = 0.5, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid", length_normalize: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """DPO on (correct step, first wrong step) given the correct prefix; see the module docstring."""
    return dpo(chosen_logprobs, rejected_logprobs, chosen_mask=chosen_mask, rejected_mask=rejected_mask,
               ref_chosen_logprobs=ref_chosen_logprobs, ref_rejected_logprobs=ref_rejected_logprobs, beta=beta,
               label_smoothing=label_smoothing, loss_type=loss_type, length_normalize=length_normalize)
