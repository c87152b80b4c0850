"""A-EDiT: asynchronous EDiT for heterogeneous workers (time-based synchronization).

Paper: "EDiT: A Local-SGD-Based Efficient Distributed Training Method for Large Language Models",
Cheng et al., arXiv 2412.07210, its asynchronous variant (reference code: atorch ``local_sgd``,
``use_async`` and ``use_step_weight``).

EDiT (``lab.distributed.edit``) synchronizes every H inner steps, so every round waits for the
slowest worker: wall-clock per round = H * max_k t_k (t_k = seconds per step of worker k).
A-EDiT synchronizes every ``sync_time`` seconds instead.

The update: in a round worker k takes as many steps as it can, s_k = floor(sync_time / t_k), and
nobody waits. Since a fast worker's pseudo-gradient covers more steps, the reduction mixes step
weights into EDiT's norm weights:

    w_k <- (1 - rho) * softmax_k(-n_k / T) + rho * s_k / sum_j s_j          (rho = step_weight_ratio)
    w_k  = s_k / sum_j s_j                                                   (no temperature)

where n_k is worker k's per-layer pseudo-gradient norm (plus 1e6 if flagged) and T EDiT's
temperature. Intuition: the clock, not the slowest worker, sets the pace; weighting by steps
counts a worker by how much work its pseudo-gradient holds.

Where it departs from EDiT: time-based instead of step-based synchronization, and the step
share in the weights. Everything else (per-layer anomaly elimination, clipping, outer step) is
EDiT's.

Choices:
- A worker that finished no step in a window (s_k = 0) has Delta_k = 0 and only keeps the
  norm-weight part.
- A flagged worker (Delta_k <- 0) keeps its step share, as in the spec's order of operations,
  which shrinks that round's step by up to rho * s_k / sum_j s_j (the panel shows A-EDiT absorbing
  bad shards less well than EDiT for this reason).
- The simulation's clock is ideal (no communication time).
"""
from __future__ import annotations

import torch

from lab.checks import check_positive, check_range
from lab.distributed.edit import PAPER, EDiT
from lab.registry import register


@register("distributed", "a_edit", paper=PAPER, arxiv="2412.07210")
class AEDiT(EDiT):
    """A-EDiT: EDiT synchronized every ``sync_time`` seconds, weights mixed with step counts.

    Args:
        sync_time: seconds between synchronizations (the simulation's clock).
        step_weight_ratio: rho, the share of the step-count weights in w_k.
        the rest: as :class:`~lab.distributed.edit.EDiT`.
    """

    def __init__(self, *, sync_time: float = 1.0, step_weight_ratio: float = 0.5,
                 outer_lr: float = 0.7, outer_momentum: float = 0.9, nesterov: bool = True,
                 temperature: float | None = 1.0, clip: float | None = None, skip_anomaly: bool = True,
                 ewma_alpha: float = 0.02, ewma_warmup: int = 120, ewma_threshold: float = 3.0,
                 layer_sizes: tuple[int, ...] | None = None):
        super().__init__(outer_lr=outer_lr, outer_momentum=outer_momentum, nesterov=nesterov,
                         temperature=temperature, clip=clip, skip_anomaly=skip_anomaly, ewma_alpha=ewma_alpha,
                         ewma_warmup=ewma_warmup, ewma_threshold=ewma_threshold, layer_sizes=layer_sizes)
        self.sync_time = check_positive("sync_time", sync_time)
        self.step_weight_ratio = check_range("step_weight_ratio", step_weight_ratio, 0.0, 1.0)

    def steps_per_round(self, step_times: torch.Tensor) -> torch.Tensor:
        """s_k = floor(sync_time / t_k) for per-step times ``step_times`` (K,) in seconds."""
        if not (step_times > 0).all():
            raise ValueError("step_times must be > 0")
        return torch.floor(self.sync_time / step_times).long()  # (K,)

    def base_weights(self, norms: torch.Tensor, steps: torch.Tensor | None) -> torch.Tensor:
        if steps is None or float(steps.sum()) == 0.0:
            return super().base_weights(norms, steps)
        share = steps.to(dtype=norms.dtype, device=norms.device) / steps.sum()  # (K,)
        if self.temperature is None:
            return share
        rho = self.step_weight_ratio
        return (1 - rho) * super().base_weights(norms, steps) + rho * share
