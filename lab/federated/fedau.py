"""FedAU: learn each client's aggregation weight from how often it shows up.

Paper: "A Lightweight Method for Tackling Unknown Participation Statistics in Federated
Averaging", Wang & Ji, arXiv 2306.03401 (reference code: IBM/fedau; semantics follow its
``main.py``).

Problem: client i takes part with an unknown probability p_i. FedAvg then optimizes
``sum_i p_i F_i`` instead of ``(1/N) sum_i F_i``: frequent clients pull the model toward their
own optimum. The unbiased fix weighs client i by 1/p_i; FedAU estimates 1/p_i online as the mean
length of the intervals between two participations (for Bernoulli(p) the interval is geometric
with mean 1/p).

The update: server state per client i: ``run_i`` (rounds since it last took part, the current
run of non-participations), ``omega_i`` (running mean of the recorded intervals) and ``count_i``
(how many intervals were recorded). Each round, for every client i:

    i in S:      w_i = omega_i if count_i > 0 else 1       (intervals recorded *before* this round)
                 record the interval run_i + 1;  run_i = 0
    i not in S:  run_i += 1;  if run_i == K (cutoff): record K, run_i = 0

    x <- x + eta_g sum_{i in S} alpha_i w_i Delta_i             (alpha_i = 1/N: divided by N, not |S|)

where S is the set of clients heard from this round, Delta_i client i's update (local SGD as in
FedAvg), K the cutoff (``cutoff``), alpha_i the objective weights and eta_g the server learning
rate. Intuition: a client that comes every fifth round on average stands in for the four rounds
it missed, so every client counts as much as it would under full participation.

With the cutoff K the recorded intervals are min(G, K), G ~ Geometric(p), so
``omega_i -> (1 - (1 - p)^K) / p`` (-> 1/p as K -> inf); a small K caps the weight of rare
clients (bounded variance, some bias back). ``cutoff=None`` is the reference code's default
(K = 100000, effectively none).

Where it departs from FedAvg: the weights are the estimates omega_i of 1/p_i instead of sample
shares, and the sum is divided by N instead of |S| or sum n_j. With full participation every
interval is 1, w_i = 1, and FedAU is FedAvg with ``weighting="all"`` (= ``"participating"``).

Choices:
- ``1/N`` is generalized to the objective weights alpha_i (uniform by default, so the
  reference's 1/N).
- Participation is what the server sees: a client whose upload was dropped or refused counts as
  not participating in that round.
- A round with no accepted update takes no step, but the intervals count it (every run_i grows).
- The estimator is :class:`IntervalEstimator`, reused by FedStale.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from lab.checks import check_int
from lab.federated.base import Aggregator, weighted_step
from lab.registry import register


class IntervalEstimator:
    """Online estimate ``omega_i`` of 1/p_i from participation intervals (with cutoff K)."""

    def __init__(self, num_clients: int, cutoff: int | None = None, dtype: torch.dtype = torch.float64,
                 device: Any = "cpu"):
        self.cutoff = None if cutoff is None else check_int("cutoff", cutoff, minimum=1)
        self.run = torch.zeros(num_clients, dtype=torch.long, device=device)  # (N,) current non-participation run
        self.omega = torch.ones(num_clients, dtype=dtype, device=device)  # (N,) mean recorded interval
        self.count = torch.zeros(num_clients, dtype=torch.long, device=device)  # (N,) recorded intervals

    def weights(self, ids: torch.Tensor) -> torch.Tensor:
        """``w_i = omega_i`` where an interval was recorded, else 1 (before this round's record)."""
        return torch.where(self.count[ids] > 0, self.omega[ids], torch.ones_like(self.omega[ids]))

    def _record(self, mask: torch.Tensor, interval: torch.Tensor) -> None:
        self.count[mask] += 1
        self.omega[mask] += (interval[mask].to(self.omega.dtype) - self.omega[mask]) / self.count[mask]

    def update(self, participated: torch.Tensor) -> None:
        """Advance one round; ``participated`` is a bool mask (N,)."""
        self._record(participated, self.run + 1)
        self.run[participated] = 0
        idle = ~participated
        self.run[idle] += 1
        if self.cutoff is not None:
            hit = idle & (self.run == self.cutoff)
            self._record(hit, self.run)
            self.run[hit] = 0

    def state_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff, "run": self.run.clone(), "omega": self.omega.clone(),
                "count": self.count.clone()}


@register("aggregator", "fedau", paper="A Lightweight Method for Tackling Unknown Participation "
          "Statistics in Federated Averaging", arxiv="2306.03401")
class FedAU(Aggregator):
    """FedAU: FedAvg with weights omega_i ~ 1/p_i estimated from participation intervals.

    Args:
        cutoff: K, the longest interval recorded (None = no cutoff, the reference default).
        server_lr: eta_g (reference default 1.0).
        batch_size: local minibatch size (reference default 16; None = full batch).
    """

    def __init__(self, *, cutoff: int | None = None, server_lr: float = 1.0, batch_size: int | None = None):
        super().__init__(server_lr=server_lr, batch_size=batch_size)
        self.cutoff = None if cutoff is None else check_int("cutoff", cutoff, minimum=1)

    def _init_state(self, dtype: torch.dtype) -> None:
        self.estimator = IntervalEstimator(self.num_clients, self.cutoff, dtype, self.device)

    def aggregate(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], round: int, *,
                  staleness: Mapping[int, int] | None = None) -> torch.Tensor:
        self._require_setup()
        ids, deltas, _ = self._stack(x, updates, num_samples)
        # w_i from intervals recorded before this round, times alpha_i (= 1/N by default)
        w = self.estimator.weights(ids) * self.alpha[ids].to(x.dtype)
        participated = torch.zeros(self.num_clients, dtype=torch.bool, device=self.device)
        participated[ids] = True
        self.estimator.update(participated)
        self._record(ids, w)
        return weighted_step(x, deltas, w, self.server_lr)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.estimator.state_dict()}
