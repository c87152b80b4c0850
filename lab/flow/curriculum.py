"""Denoising-difficulty curriculum: train the easy (noisy) timesteps first, then add harder ones.

Paper: "Denoising Task Difficulty-based Curriculum for Training Diffusion Models", Kim et al.,
arXiv 2403.10348.

The rule: partition the time range into N = ``n_clusters`` clusters of equal width,
``C_k = [(k−1)/N, k/N)`` (t = 1 noise, so C_1 is the hardest and C_N the easiest); stage
s = 1..N draws the training times from ``C_N ∪ … ∪ C_{N−s+1}``, i.e. ``t ~ U[(N − s)/N, 1]``; after
stage N training is uniform as usual. Pacing: advance when the EMA of the training loss,
``m ← λ m + (1 − λ) loss`` (λ = ``ema``), has not improved on its best by a relative ``tol`` for
``patience`` updates, or after ``max_stage_steps`` updates at most. Intuition: denoising near the
data (low noise) converges slower and is harder; learning the coarse, noisy tasks first gives
the later ones a better start.

Where it departs from CFM: only in the distribution of t; the loss (:mod:`lab.flow.cfm`) is
unchanged.

Choices:
- N, patience and the plateau rule are [unverified] and exposed; the defaults (N = 5,
  patience 20, ``max_stage_steps`` 80, tol 0.01, EMA 0.9) are small so all stages fit into a
  one-second pretraining run.
- Improvement means ``m < best·(1 − tol)``; each new stage restarts the EMA, the best value and
  both counters; once every cluster is in, ``update`` does nothing and returns False.

State (``state_dict``): ``stage``, ``stage_steps``, ``wait``, ``smoothed`` (the EMA), ``best``.
"""
from __future__ import annotations

import torch

from lab.checks import check_int, check_positive, check_range
from lab.registry import register


@register("flow_loss", "difficulty_curriculum",
          paper="Denoising Task Difficulty-based Curriculum for Training Diffusion Models",
          arxiv="2403.10348")
class DifficultyCurriculum:
    """Sampler of training times ``t`` whose lower bound moves from 1 − 1/N down to 0.

    Args:
        n_clusters: N, number of equal-width timestep clusters.
        patience: updates without improvement of the loss EMA before advancing a stage.
        max_stage_steps: updates after which a stage advances anyway.
        tol: relative improvement of the EMA that counts as progress.
        ema: smoothing of the loss EMA.
    """

    def __init__(self, n_clusters: int = 5, patience: int = 20, max_stage_steps: int = 80,
                 tol: float = 0.01, ema: float = 0.9):
        self.n_clusters = check_int("n_clusters", n_clusters, minimum=1)
        self.patience = check_int("patience", patience, minimum=1)
        self.max_stage_steps = check_int("max_stage_steps", max_stage_steps, minimum=1)
        self.tol = check_positive("tol", tol, allow_zero=True)
        self.ema = check_range("ema", ema, 0.0, 1.0, hi_open=True)
        self.stage = 1
        self.stage_steps = 0
        self.wait = 0
        self.smoothed: float | None = None
        self.best = float("inf")

    @property
    def done(self) -> bool:
        """True once every cluster is in (uniform training)."""
        return self.stage >= self.n_clusters

    def t_range(self) -> tuple[float, float]:
        """Current ``[lo, 1]`` with ``lo = (N − stage)/N``."""
        return (self.n_clusters - self.stage) / self.n_clusters, 1.0

    def sample_t(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n,)`` times uniform on the current range."""
        lo, hi = self.t_range()
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device)

    def update(self, loss: float) -> bool:
        """Record one training loss; returns True when the stage advanced."""
        if self.done:
            return False
        loss = float(loss)
        self.smoothed = loss if self.smoothed is None else self.ema * self.smoothed + (1 - self.ema) * loss
        self.stage_steps += 1
        if self.smoothed < self.best * (1 - self.tol):
            self.best, self.wait = self.smoothed, 0
        else:
            self.wait += 1
        if self.wait >= self.patience or self.stage_steps >= self.max_stage_steps:
            self.stage += 1
            self.stage_steps, self.wait, self.best, self.smoothed = 0, 0, float("inf"), None
            return True
        return False

    def state_dict(self) -> dict:
        """Everything the curriculum keeps."""
        return {"stage": self.stage, "stage_steps": self.stage_steps, "wait": self.wait,
                "smoothed": self.smoothed, "best": self.best}


__all__ = ["DifficultyCurriculum"]
