"""Denoising-difficulty curriculum: train the easy (noisy) timesteps first, add harder ones.

"Denoising Task Difficulty-based Curriculum for Training Diffusion Models" (Kim, Go, Kwon, Kim,
arXiv 2403.10348). Observation: denoising tasks near the data (low noise) converge slower and are
harder. Partition the time range into N clusters of equal width, ``C_k = [(k−1)/N, k/N)`` in the
lab's convention (t = 1 noise, so C_1 is the hardest and C_N the easiest). Stage s = 1..N trains
on ``C_N ∪ … ∪ C_{N−s+1}``, i.e. ``t ~ U[(N − s)/N, 1]``; after stage N, training is uniform as
usual. Pacing is adaptive: advance when the training loss has stopped improving for ``patience``
updates (plateau, measured on an exponential moving average of the loss with relative tolerance
``tol``), or after ``max_stage_steps`` updates at most.

It departs from CFM (:mod:`lab.flow.cfm`) only in the distribution of t; the loss is unchanged.
N, patience and the plateau rule are [unverified] (exposed; the toy defaults are small so that all
stages fit into a one-second pretraining run).
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
