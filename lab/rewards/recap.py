"""RECAP: dynamic reweighting of K training objectives from short-horizon convergence and instability.

Paper: "Beyond Reasoning Gains: Mitigating General Capabilities Forgetting in Large Reasoning
Models", Phan et al., arXiv 2510.21978. RLVR plus replay of general-capability objectives; the
weights of the objectives adapt online, away from saturated objectives and toward ones that still
move or wobble. No extra model is trained.

The rule: for objective k with loss L_k^(t) (lower is better; pass −reward for a reward), keep the
last 2W values and let

    μ_k  = mean of the last W values,   μ̃_k = mean of the W values before,   σ_k = std of the last W
    c_k  = |μ̃_k| / max(|μ_k|, δ)                 convergence rate: > 1 while the loss still falls
    i_k  = σ_k / max(|μ_k| + |μ̃_k|, δ)           inverse signal-to-noise (instability)
    s_k  = c_k + i_k
    λ_k  = K · softmax_k(s_k / T)                 (Σ λ = K; λ = 1 for all until 2W values exist)
    L    = (1/K) Σ_k λ_k L_k

where K is the number of objectives, W the window, δ = 1e-8 a floor and T the softmax temperature.
Intuition: a saturated objective (flat loss: c = 1, i ≈ 0) gets less weight than one still
improving (c > 1) or one that is volatile (large i).

``rule="level"`` is the lab's second instantiation (``spec/federated_moe_flow.md`` D.7), which
also looks at how far each loss still is from where it started. Over the last W losses:

    ρ_k  = clamp((mean(first half) − mean(second half)) / mean(window), 0, 1)   convergence rate
    s_k  = std(window) / mean(window)                                           instability
    π_k  = s_k + (1 − ρ_k) · L_k^(t) / L_k^(0)                                  priority
    λ_k  = K · softmax_k(π_k / T)

so an objective that has stopped improving while its loss is still high (under-performing) gains
weight, and a solved one (loss near 0) loses it: the weights act as a controller that keeps the
objectives balanced.

Where it departs from plain multi-objective GRPO/SFT (fixed weights, λ_k = 1): only the
per-objective weights.

Choices ([unverified] in the lab's spec; the formula comes from a third-party summary of the paper):
- The summary's ratio reads c = μ/μ̃, which for a *falling* loss is < 1 and would move weight
  toward the saturated objective, against the paper's stated aim. The lab orients it as
  c = μ̃/μ (> 1 = still improving) and uses |·| with a floor δ = 1e-8 so losses near 0 or of
  either sign stay finite.
- σ is the population std (divide by W).
- T = 5 (summary); W = 5 by default (not stated).
- The ``level`` rule starts once W values exist (the ``summary`` rule needs 2W).
- ``lab.experiments.multi_objective`` uses it as *reward* weights: each objective's "loss" is the
  negative batch-mean reward of that objective.

Example (lab orientation): objective 1 with μ = 0.5, μ̃ = 0.6, σ = 0.05 → c = 1.2,
i = 0.05/1.1 = 0.04545, s = 1.24545; a saturated objective 2 (μ = μ̃, σ = 0) → s = 1;
K = 2, T = 5 → λ = 2·softmax((1.24545, 1)/5) = (1.02454, 0.97546).
"""
from __future__ import annotations

from collections import deque
from typing import Any

import torch

from lab.checks import check_choice, check_int, check_positive, check_tensor
from lab.registry import register

FLOOR = 1e-8


def recap_scores(recent: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """s_k = c_k + i_k from the last W losses ``recent`` (K, W) and the W before ``previous`` (K, W)."""
    mu, mu_prev = recent.double().mean(1), previous.double().mean(1)
    sigma = recent.double().std(1, unbiased=False)
    c = mu_prev.abs() / mu.abs().clamp_min(FLOOR)                                 # convergence rate
    i = sigma / (mu.abs() + mu_prev.abs()).clamp_min(FLOOR)                       # instability
    return c + i


def level_scores(window: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """π_k = s_k + (1 − ρ_k)·level_k from the last W losses ``window`` (K, W) and the first losses (K,)."""
    w = window.double()
    half = w.shape[1] // 2
    mean = w.mean(1).abs().clamp_min(FLOOR)
    rho = ((w[:, :half].mean(1) - w[:, half:].mean(1)) / mean).clamp(0.0, 1.0)
    instability = w.std(1, unbiased=False) / mean
    level = w[:, -1].abs() / initial.double().abs().clamp_min(FLOOR)
    return instability + (1.0 - rho) * level


def recap_weights(scores: torch.Tensor, temperature: float = 5.0) -> torch.Tensor:
    """λ = K · softmax(s / T)."""
    check_positive("temperature", temperature)
    return scores.shape[0] * torch.softmax(scores.double() / temperature, dim=0)


@register("reward", "recap", paper="Beyond Reasoning Gains: Mitigating General Capabilities Forgetting in Large Reasoning Models",
          arxiv="2510.21978", summary="Objective weights from short-horizon convergence and instability of each loss")
class RECAP:
    """Online objective weights λ (K,) from a window of each objective's loss.

    Args:
        n_objectives: K.
        window: W, the horizon of each mean (5).
        temperature: T of the softmax (5.0).
        rule: ``"summary"`` (c + i, the paper as summarized) or ``"level"`` (the lab's D.7 rule).
    """

    RULES = ("summary", "level")

    def __init__(self, n_objectives: int, window: int = 5, temperature: float = 5.0, rule: str = "summary"):
        self.n_objectives = check_int("n_objectives", n_objectives, minimum=1)
        self.window = check_int("window", window, minimum=2)
        self.temperature = check_positive("temperature", temperature)
        self.rule = check_choice("rule", rule, self.RULES)
        self.initial: list[float] | None = None
        self.history: deque[list[float]] = deque(maxlen=2 * window)
        self.lambdas = torch.ones(n_objectives, dtype=torch.float64, device="cpu")  # bookkeeping: CPU

    def update(self, objective_losses: Any) -> dict[str, Any]:
        """Append this step's losses (K,) and recompute λ."""
        losses = torch.as_tensor(objective_losses, dtype=torch.float64, device="cpu")
        check_tensor("objective_losses", losses, shape=(self.n_objectives,), finite=True)
        self.history.append(losses.tolist())
        if self.initial is None:
            self.initial = losses.tolist()
        if self.rule == "level" and len(self.history) >= self.window:
            h = torch.tensor(list(self.history)[-self.window:], dtype=torch.float64, device="cpu").T   # (K, W)
            scores = level_scores(h, torch.tensor(self.initial, device="cpu"))
            self.lambdas = recap_weights(scores, self.temperature)
            return {"recap/lambda": self.lambdas.tolist(), "recap/score": scores.tolist()}
        if len(self.history) < 2 * self.window:
            self.lambdas = torch.ones(self.n_objectives, dtype=torch.float64, device="cpu")
            return {"recap/lambda": self.lambdas.tolist()}
        h = torch.tensor(list(self.history), dtype=torch.float64, device="cpu").T                  # (K, 2W)
        scores = recap_scores(h[:, self.window:], h[:, :self.window])
        self.lambdas = recap_weights(scores, self.temperature)
        return {"recap/lambda": self.lambdas.tolist(), "recap/score": scores.tolist()}

    def __call__(self, rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """R_i = (1/K) Σ_k λ_k r_{i,k} for per-objective rewards (B, K)."""
        check_tensor("rewards", rewards, ndim=2, finite=True)
        if rewards.shape[1] != self.n_objectives:
            raise ValueError(f"rewards must have {self.n_objectives} columns, got shape {tuple(rewards.shape)}")
        combined = rewards.double() @ self.lambdas.to(rewards.device) / self.n_objectives             # (B,)
        return combined.to(rewards.dtype), {"recap/lambda": self.lambdas.tolist(), "reward": float(combined.mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "lambdas": self.lambdas.tolist(),
                "initial": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque((list(h) for h in state["history"]), maxlen=2 * self.window)
        self.lambdas = torch.tensor(state["lambdas"], dtype=torch.float64, device="cpu")
        self.initial = state["initial"]


__all__ = ["RECAP", "recap_scores", "level_scores", "recap_weights"]
