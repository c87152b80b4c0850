"""PRO (Preference Orchestrator): prompt-aware objective weights from a small adapter.

Paper: "Preference Orchestrator: Prompt-Aware Multi-Objective Alignment for Large Language
Models", Liu et al., arXiv 2511.10656. No public code.

The rule: instead of one user-chosen weight vector for every prompt, a lightweight adapter f_φ reads
the prompt and outputs weights on the simplex. It is trained on the reward-model scores of
*preferred* responses, which show how the objectives should be balanced for that kind of prompt:

    z_k(x)   = (ŝ_k(x, y⁺) − mean_k) / (std_k + ε)      each RM's scores z-scored over the batch
    w*(x)    = softmax_k(z(x) / τ)                        target weights
    f_φ(x)   = softmax(W φ(x) + b)                        the adapter: linear on prompt features φ(x)
    L(φ)     = − Σ_k w*_k(x) log f_φ(x)_k                 cross-entropy to the target
    R(x, y)  = Σ_k f_φ(x)_k · r_k(x, y)                   the prompt-aware reward for RL

where k indexes the K objectives (reward models), ŝ_k(x, y⁺) is RM k's score of the preferred
response to prompt x, mean_k / std_k are over the batch, ε = 1e-6, τ the target temperature,
φ(x) ∈ R^D the prompt features, (W, b) the adapter's weights and r_k(x, y) RM k's reward of a
sampled response. Intuition: an objective on which a prompt's preferred answer stands out is the
one that matters for that prompt.

Where it departs from fixed-weight scalarization (R = Σ_k w_k r_k, one w for all prompts): the
weights are a function of the prompt.

Choices: the paper's adapter, target normalization and loss are not public; this is the lab's
template:
- A linear adapter on given prompt features, zero-initialized (uniform weights) unless a generator
  is given.
- z-scoring per RM over the batch with the population std; identical scores (or a batch of one)
  give uniform targets.
- Softmax with τ = 1, cross-entropy, Adam steps inside :meth:`fit` (lr 0.05).
- The weights enter R without gradient (the adapter is trained only by :meth:`fit`).

Example: z-scored scores (1, −1), τ = 1 → w* = softmax(1, −1) = (0.881, 0.119).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lab.checks import check_int, check_positive, check_tensor
from lab.registry import register
from lab.rewards.multi_objective import check_objectives, weighted_sum


def target_weights(preferred_scores: torch.Tensor, temperature: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """w* (B, K) = softmax over objectives of the per-RM z-scored scores of preferred responses."""
    s = check_objectives(preferred_scores, name="preferred_scores").double()
    check_positive("temperature", temperature)
    std = s.std(0, unbiased=False) if s.shape[0] > 1 else torch.zeros(s.shape[1], dtype=s.dtype, device=s.device)
    z = (s - s.mean(0)) / (std + eps)                                             # (B, K)
    return torch.softmax(z / temperature, dim=-1)


@register("reward", "pro", paper="Preference Orchestrator: Prompt-Aware Multi-Objective Alignment for Large Language Models",
          arxiv="2511.10656", summary="A small adapter maps prompt features to per-prompt objective weights")
class PreferenceOrchestrator(nn.Module):
    """Linear softmax adapter from prompt features (D,) to weights over K objectives.

    Args:
        n_features: D.
        n_objectives: K.
        lr: Adam learning rate of :meth:`fit` (0.05).
        temperature: τ of the target softmax (1.0).
        generator: initializes the adapter (zeros if None: uniform weights).
        device: where the adapter lives (the generator's device if given, else the CPU).
    """

    def __init__(self, n_features: int, n_objectives: int, lr: float = 0.05, temperature: float = 1.0,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None):
        super().__init__()
        device = torch.device(device if device is not None else generator.device if generator is not None else "cpu")
        self.n_features = check_int("n_features", n_features, minimum=1)
        self.n_objectives = check_int("n_objectives", n_objectives, minimum=1)
        self.lr = check_positive("lr", lr)
        self.temperature = check_positive("temperature", temperature)
        self.adapter = nn.Linear(n_features, n_objectives, device=device)
        with torch.no_grad():
            if generator is None:
                self.adapter.weight.zero_()
            else:
                self.adapter.weight.copy_(0.01 * torch.randn(n_objectives, n_features, generator=generator, device=device))
            self.adapter.bias.zero_()
        self.optimizer = torch.optim.Adam(self.adapter.parameters(), lr=lr)

    def _features(self, features: Any) -> torch.Tensor:
        check_tensor("features", features, ndim=2, finite=True, dtype_kind="float")
        if features.shape[1] != self.n_features:
            raise ValueError(f"features must have {self.n_features} columns, got shape {tuple(features.shape)}")
        return features.float()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """f_φ(x) (B, K) on the simplex."""
        return torch.softmax(self.adapter(self._features(features)), dim=-1)

    def fit(self, features: torch.Tensor, preferred_scores: torch.Tensor, steps: int = 1) -> dict[str, float]:
        """``steps`` Adam steps of cross-entropy to w*(x) on a batch of (features (B, D), scores (B, K))."""
        check_int("steps", steps, minimum=1)
        x = self._features(features)
        if preferred_scores.shape != (x.shape[0], self.n_objectives):
            raise ValueError(f"preferred_scores must have shape ({x.shape[0]}, {self.n_objectives}), "
                             f"got {tuple(preferred_scores.shape)}")
        target = target_weights(preferred_scores, self.temperature).float()          # (B, K)
        for _ in range(steps):
            logp = torch.log_softmax(self.adapter(x), dim=-1)
            loss = -(target * logp).sum(-1).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return {"pro/loss": float(loss.detach())}

    def __call__(self, rewards: torch.Tensor, *, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """R_i = Σ_k f_φ(x_i)_k r_{i,k} for ``rewards`` (B, K) and prompt ``features`` (B, D)."""
        r = check_objectives(rewards)
        if r.shape[1] != self.n_objectives or features.shape[0] != r.shape[0]:
            raise ValueError(f"rewards {tuple(r.shape)} and features {tuple(features.shape)} do not match "
                             f"({self.n_objectives} objectives, one feature row per response)")
        with torch.no_grad():
            w = self.forward(features).to(r.dtype)                                  # (B, K)
        combined = weighted_sum(r, w)
        return combined, {"reward": float(combined.mean()), "pro/weights": w.mean(0).tolist()}


__all__ = ["PreferenceOrchestrator", "target_weights"]
