"""KL penalty in the reward: RLHF-PPO's way to stay near the reference policy, fixed or adaptive β.

Paper: "Fine-Tuning Language Models from Human Preferences", Ziegler et al., arXiv 1909.08593 (the
adaptive coefficient), and "Training language models to follow instructions with human feedback"
(InstructGPT), Ouyang et al., arXiv 2203.02155.

The update: per response token, with Δ_{i,t} = ℓ^old_{i,t} − ℓ^ref_{i,t} on the sampled tokens
(detached)::

    r_{i,t} ← r_{i,t} − β · KL_{i,t},      KL ∈ {k1 = Δ, k2 = Δ²/2, k3 = e^{−Δ} − 1 + Δ}

where i indexes the B responses, t the valid tokens (mask m), ℓ^old / ℓ^ref the token log-probs
under the sampling policy and the frozen reference, r the ``token_rewards`` (the outcome reward R_i
on the last valid token) and β ≥ 0 the coefficient. Summed over a response this is
R_i − β Σ_t KL_{i,t}, the sequence-level penalty of TRL's RLOO. Intuition: the penalty is credited
through the advantages like any other reward, so its policy gradient is the gradient of
−β·KL(π‖π_ref); a k1 *loss* term instead has zero expected gradient on-policy (E_π[∇ℓ] = 0) and
restrains nothing (the same fact that makes GRPO use k3 as a loss term).

``reward/adaptive_kl_penalty`` is the same penalty with Ziegler et al.'s adaptive coefficient: after
each batch of n responses whose mean sequence KL is KL = mean_i Σ_t KL_{i,t},

    e = clip(KL / KL_target − 1, −0.2, 0.2),      β ← β · (1 + e · n / horizon)

so β grows while the policy drifts further than the target and shrinks while it stays closer.

Where it departs from PPO's KL loss term (``policy_loss/ppo`` with a k3 term, as GRPO): the KL goes
into the reward, token by token, instead of into the loss.

Choices:
- Lab defaults as TRL's PPO: β = 0.05, k1; the adaptive controller as TRL's classic ``PPOConfig``
  (β₀ = 0.2, KL_target = 6 nats, horizon = 10000; the toys drift far less, so pass a smaller
  target there).
- The penalty lands on every valid token; padding stays 0.
- The adaptive controller penalizes a batch with the β from before its own update.
- "Current KL" is the mean *sequence* KL (TRL); verl uses the mean per-token KL.
- Shape: unlike the sequence-level reward functions of Part F.2 this one maps per-token rewards to
  per-token rewards (B, T); :func:`lab.experiments.policy_optimization` then sets
  ``rewards = Σ_t token_rewards`` so the two views of the batch stay equal.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_choice, check_int, check_positive, check_tensor
from lab.registry import register
from lab.rl.core import KL_ESTIMATORS, as_mask, check_detached, check_per_token, kl, masked_mean


@register("reward", "kl_penalty", paper="Fine-Tuning Language Models from Human Preferences",
          arxiv="1909.08593")
def kl_reward_penalty(token_rewards: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, *, beta: float = 0.05, kl_estimator: str = "k1",
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
    """``token_rewards − β·KL(ℓ^old, ℓ^ref)`` on valid tokens (B, T); padding stays 0.

    Metrics: ``kl_reward/kl`` (mean per-token KL estimate), ``kl_reward/seq_kl`` (mean per-response
    KL Σ_t KL), ``kl_reward/penalty`` (β times it) and ``kl_reward/beta``.
    """
    check_positive("beta", beta, allow_zero=True)
    check_tensor("token_rewards", token_rewards, ndim=2, finite=True, dtype_kind="float")
    shape = tuple(token_rewards.shape)
    token_rewards = check_per_token("token_rewards", token_rewards, shape)
    old_logprobs = check_per_token("old_logprobs", old_logprobs, shape)
    ref_logprobs = check_per_token("ref_logprobs", ref_logprobs, shape)
    check_detached("old_logprobs", old_logprobs)
    check_detached("ref_logprobs", ref_logprobs)
    m = as_mask(mask, token_rewards)
    kl_values = kl(old_logprobs.to(token_rewards.dtype), ref_logprobs.to(token_rewards.dtype), kl_estimator) * m
    shaped = (token_rewards - beta * kl_values) * m
    seq_kl = float(kl_values.sum(-1).mean()) if shape[0] else 0.0
    metrics = {"kl_reward/kl": float(masked_mean(kl_values, m)), "kl_reward/seq_kl": seq_kl,
               "kl_reward/penalty": beta * seq_kl, "kl_reward/beta": float(beta)}
    return shaped, metrics


@register("reward", "adaptive_kl_penalty", paper="Fine-Tuning Language Models from Human Preferences",
          arxiv="1909.08593")
class AdaptiveKLPenalty:
    """:func:`kl_reward_penalty` with β adapted towards a KL target after every batch.

    Args:
        beta: β₀, the initial coefficient (0.2).
        target: KL_target, the wanted mean sequence KL in nats (6.0).
        horizon: the adaptation horizon in responses (10000).
        kl_estimator: ``"k1"`` (default), ``"k2"`` or ``"k3"``.

    Metrics: those of :func:`kl_reward_penalty` (with the β used on this batch), plus
    ``kl_reward/seq_kl`` (the observed mean sequence KL) and ``kl_reward/next_beta``.
    """

    def __init__(self, beta: float = 0.2, target: float = 6.0, horizon: int = 10000,
                 kl_estimator: str = "k1"):
        self.beta = check_positive("beta", beta)
        self.target = check_positive("target", target)
        self.horizon = check_int("horizon", horizon, minimum=1)
        check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
        self.kl_estimator = kl_estimator

    def __call__(self, token_rewards: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        shaped, metrics = kl_reward_penalty(token_rewards, old_logprobs, ref_logprobs, mask, beta=self.beta,
                                            kl_estimator=self.kl_estimator)
        metrics["kl_reward/next_beta"] = self.update(metrics["kl_reward/seq_kl"], shaped.shape[0])
        return shaped, metrics

    def update(self, seq_kl: float, n: int) -> float:
        """β ← β (1 + clip(KL/KL_target − 1, ±0.2) · n / horizon); returns the new β."""
        error = min(max(seq_kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n / self.horizon
        return self.beta

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon,
                "kl_estimator": self.kl_estimator}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


__all__ = ["AdaptiveKLPenalty", "kl_reward_penalty"]
