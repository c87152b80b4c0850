"""Dynamic reward weighting: hypervolume-guided and gradient-based (two registry entries).

Paper: "Learning to Optimize Multi-Objective Alignment Through Dynamic Reward Weighting", Lu et al.,
arXiv 2509.11452 (reference code: yining610/dynamic-reward-weighting).

The rules: both change the weighting of K per-objective rewards r_{i,k} (response i, objective k,
higher is better) during online RL.

(a) ``hypervolume_weighting`` — keep a buffer 𝓑 of Pareto points of evaluation vectors v ∈ R^K
(the first one, the initial model, is the reference point z). After each evaluation

    ΔHV  = HV(𝓑 ∪ {v}; z) − HV(𝓑; z)
    meta = 0.5 + 1.5 · tanh(max(ΔHV, 0))          (meta = 1 before the first comparison)
    𝓑   ← 𝓑 ∪ {v}  if ΔHV > 0
    R_i  = meta · Σ_k w_k r_{i,k}                   (user weights w stay fixed)

where HV(·; z) is the hypervolume dominated by a point set above z. A checkpoint that pushes the
front out is rewarded (meta up to 2), one that does not has its reward halved. Note: a per-group std
normalization (GRPO) cancels a common factor; meta acts through estimators without it (Dr. GRPO,
RLOO, REINFORCE) as a step-size signal.

(b) ``gradient_weighting`` — for each objective k take the policy gradient g_k ∈ R^P (P parameters)
of the loss with advantages from r_k alone; the influence of k is the row sum of the Gram matrix,

    s_k = Σ_j ⟨g_k, g_j⟩                (self included; averaged over ``accumulation`` steps)
    log w ← log w + η · s / λ_reg ,   w ← softmax(log w)
    R_i = Σ_k w_k r_{i,k}

with η the step size and λ_reg a scale: mirror ascent on the simplex. Intuition: an objective whose
gradient agrees with the others gains weight, one that fights them loses it.

Where it departs from fixed-weight linear scalarization: R_i = Σ_k w_k r_{i,k} with one w only ever
prefers vertices of the convex hull of what the policy can reach, so a front that bends inward keeps
part of itself out of reach; (a) scales the reward by the hypervolume gain of the latest checkpoint,
(b) moves the weights themselves.

Choices:
- The code stores maximized objectives (negating minimized ones) — so do we: every v and r here is
  "higher is better".
- ΔHV is never negative here (HV is monotone in the point set); the clip at 0 only guards rounding.
- The first evaluation fed to :meth:`HypervolumeWeighting.update` is the reference point; meta = 1
  until the second.
- User weights are normalized to sum 1 (1/K each by default).
- Defaults as the reference code: λ_reg = 1e-5, accumulation 1; η is the caller's learning rate (the
  code uses the actor's lr). Scores are computed in float64 (they are tiny next to λ_reg's scale).

Examples: ΔHV = 0.1 → meta = 0.5 + 1.5·tanh(0.1) = 0.64950; ΔHV = 0 → 0.5.
w = (0.5, 0.5), η·s/λ_reg = (0.2, −0.2) → w = softmax(log 0.5 + (0.2, −0.2)) = (0.59869, 0.40131).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lab.checks import check_int, check_positive, check_tensor
from lab.registry import register
from lab.rewards.multi_objective import (check_objectives, check_weights, hypervolume, hypervolume_contribution,
                                    pareto_front, weighted_sum)

PAPER = "Learning to Optimize Multi-Objective Alignment Through Dynamic Reward Weighting"
ARXIV = "2509.11452"


def initial_weights(weights: Any, n_objectives: int | None) -> torch.Tensor:
    """The given weights (K,) normalized to sum 1, or 1/K each when only ``n_objectives`` is given."""
    if weights is None:
        if n_objectives is None:
            raise ValueError("give weights or n_objectives")
        n = check_int("n_objectives", n_objectives, minimum=1)
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device="cpu")  # bookkeeping: CPU
    w = check_weights(weights, len(weights) if not isinstance(weights, torch.Tensor) else weights.shape[-1])
    if w.dim() != 1:
        raise ValueError(f"weights must be one vector (K,), got shape {tuple(w.shape)}")
    return w / w.sum()


def hypervolume_meta(delta_hv: float) -> float:
    """meta = 0.5 + 1.5·tanh(max(ΔHV, 0))."""
    if not math.isfinite(float(delta_hv)):
        raise ValueError(f"delta_hv must be finite, got {delta_hv}")
    return 0.5 + 1.5 * math.tanh(max(float(delta_hv), 0.0))


def mirror_step(weights: torch.Tensor, scores: torch.Tensor, lr: float, reg: float) -> torch.Tensor:
    """w ← softmax(log w + lr·s/λ_reg) (float64)."""
    return torch.softmax(torch.log(weights.double()) + lr * scores.double() / reg, dim=0)


@register("reward", "hypervolume_weighting", paper=PAPER, arxiv=ARXIV,
          summary="Reward scaled by how much the latest checkpoint enlarges the Pareto hypervolume")
class HypervolumeWeighting:
    """Fixed weights w times a meta factor from the hypervolume gain of each evaluation.

    Args:
        weights: w (K,), the user's preference (normalized to sum 1; default 1/K each).
        n_objectives: K, when ``weights`` is not given.
    """

    def __init__(self, weights: Any = None, n_objectives: int | None = None):
        self.weights = initial_weights(weights, n_objectives)
        self.buffer: list[list[float]] = []        # buffer[0] is the reference point z
        self.meta = 1.0

    @property
    def n_objectives(self) -> int:
        return int(self.weights.shape[0])

    def __call__(self, rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """R_i = meta · Σ_k w_k r_{i,k} for ``rewards`` (B, K)."""
        combined = self.meta * weighted_sum(rewards, self.weights)
        return combined, {"reward": float(combined.mean()), "hv/meta": self.meta}

    def update(self, evaluation: Any) -> dict[str, float]:
        """Feed one evaluation vector v (K,) (higher is better); updates meta and the buffer."""
        v = torch.as_tensor(evaluation, dtype=torch.float64, device="cpu")
        check_tensor("evaluation", v, shape=(self.n_objectives,), finite=True)
        if not self.buffer:
            self.buffer.append(v.tolist())
            return {"hv/delta": 0.0, "hv/meta": self.meta, "hv/volume": 0.0}
        ref = self.buffer[0]
        delta = hypervolume_contribution(v, self.buffer[1:], ref) if len(self.buffer) > 1 else \
            hypervolume(v[None], ref)
        self.meta = hypervolume_meta(delta)
        if delta > 0:
            self.buffer.append(v.tolist())
        return {"hv/delta": delta, "hv/meta": self.meta, "hv/volume": self.volume()}

    def volume(self) -> float:
        """HV of the buffered Pareto points above the reference point."""
        if len(self.buffer) < 2:
            return 0.0
        return hypervolume(pareto_front(self.buffer[1:]), self.buffer[0])

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "buffer": [list(p) for p in self.buffer], "meta": self.meta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = check_weights(state["weights"], len(state["weights"]))
        self.buffer = [list(p) for p in state["buffer"]]
        self.meta = float(state["meta"])


@register("reward", "gradient_weighting", paper=PAPER, arxiv=ARXIV,
          summary="Weights moved on the simplex toward objectives whose gradients agree with the others")
class GradientWeighting:
    """Mirror ascent of the weights on the row sums of the per-objective gradient Gram matrix.

    Args:
        weights: initial w (K,) (normalized; default 1/K each).
        n_objectives: K, when ``weights`` is not given.
        lr: η, the step on log w.
        reg: λ_reg (1e-5).
        accumulation: steps whose scores are averaged before one weight update (1).
    """

    def __init__(self, weights: Any = None, n_objectives: int | None = None, lr: float = 1e-6,
                 reg: float = 1e-5, accumulation: int = 1):
        self.weights = initial_weights(weights, n_objectives)
        self.lr = check_positive("lr", lr, allow_zero=True)
        self.reg = check_positive("reg", reg)
        self.accumulation = check_int("accumulation", accumulation, minimum=1)
        self._scores: list[torch.Tensor] = []

    def __call__(self, rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """R_i = Σ_k w_k r_{i,k} for ``rewards`` (B, K)."""
        check_objectives(rewards)
        combined = weighted_sum(rewards, self.weights)
        return combined, {"reward": float(combined.mean())}

    @staticmethod
    def influence(gradients: torch.Tensor) -> torch.Tensor:
        """s_k = Σ_j ⟨g_k, g_j⟩ for ``gradients`` (K, P) -> (K,) float64."""
        check_tensor("gradients", gradients, ndim=2, finite=True)
        g = gradients.detach().double()
        return (g @ g.T).sum(1)                                                  # (K,)

    def update(self, gradients: torch.Tensor) -> dict[str, Any]:
        """Feed per-objective flat gradients (K, P); moves the weights every ``accumulation`` calls."""
        if gradients.dim() != 2 or gradients.shape[0] != self.weights.shape[0]:
            raise ValueError(f"gradients must have shape ({self.weights.shape[0]}, P), got {tuple(gradients.shape)}")
        self._scores.append(self.influence(gradients).to(self.weights.device))   # (K,) to the CPU
        scores = torch.stack(self._scores).mean(0)
        if len(self._scores) >= self.accumulation:
            self.weights = mirror_step(self.weights, scores, self.lr, self.reg)
            self._scores = []
        return {"gw/weights": self.weights.tolist(), "gw/scores": scores.tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "scores": [s.tolist() for s in self._scores]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = torch.tensor(state["weights"], dtype=torch.float64, device="cpu")
        self._scores = [torch.tensor(s, dtype=torch.float64, device="cpu") for s in state["scores"]]


__all__ = ["HypervolumeWeighting", "GradientWeighting", "hypervolume_meta", "mirror_step"]
