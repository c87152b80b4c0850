"""FedStale: a tunable share beta of the stale updates of absent clients.

Paper: "FedStale: leveraging stale client updates in federated learning", Rodio & Neglia, arXiv
2405.04171 (reference code: arodio/FedStale; aggregation as in ``history_tracker.py``,
``utils/optim.py`` ``HistorySGD(history_coefficient=beta)``, ``client_sampler.py`` with weight
alpha_k / p_k).

The update: server state x, ``h_k`` = the last update received from client k (init 0), and the
participation probabilities p_k (given, or estimated online with FedAU's interval estimator, as
the FedStale repository does). Each round:

    Delta = sum_{k in S} (alpha_k / p_k) Delta_k  +  beta * [ sum_k alpha_k h_k - sum_{k in S} (alpha_k / p_k) h_k ]
    h_k <- Delta_k for k in S;   x <- x + eta_g Delta

where S is the set of clients heard from this round, Delta_k client k's fresh update (local SGD as
in FedAvg), alpha_k the objective weights (``sum_k alpha_k F_k`` is minimized), beta in [0, 1] the
weight of the stale part and eta_g the server learning rate. Intuition: the bracket replaces the
absent clients' missing contribution by their last update, and beta says how much to trust it:
stale updates cancel sampling noise but carry an old model's direction.

Where it departs from FedVARP: the stale correction is scaled by beta, and fresh and stale
updates are weighted by alpha_k / p_k (unbiased under uneven participation). Limits: beta = 0 is
unbiased FedAvg with alpha_k / p_k weights (fresh updates only); beta = 1 is FedVARP (with uniform
sampling of M of N, p_k = M/N and alpha_k = 1/N give exactly FedVARP's 1/|S|). The paper's
guidance: stale updates help less as data heterogeneity decreases and as participation
heterogeneity increases (the least-participating client's stale memory drives the error), so the
best beta moves from near 1 (non-IID data, even participation) toward 0 (IID-ish data, very
uneven participation).

Choices:
- A round with no update is skipped (model and memory unchanged); the participation estimator
  still counts the round.
- With ``probabilities=None`` the estimate of 1/p_k is FedAU's omega_k, taken from the intervals
  recorded before the current round (1 until an interval of client k has been recorded, i.e. at
  its first participation when there is no cutoff); beta = 0 is then exactly FedAU.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from lab.checks import check_range, check_tensor
from lab.federated.base import Aggregator
from lab.federated.fedau import IntervalEstimator
from lab.registry import register


def fedstale_step(deltas: torch.Tensor, ids: torch.Tensor, memory: torch.Tensor, alpha: torch.Tensor,
                  inverse_p: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure FedStale step: ``(Delta (d,), new memory (N, d))``.

    deltas (M, d) of clients ``ids``; memory (N, d) = h; alpha (N,); inverse_p (M,) = 1/p of ``ids``.
    """
    w = alpha[ids] * inverse_p  # (M,) alpha_k / p_k
    fresh = (w[:, None] * deltas).sum(0)
    stale = (alpha[:, None] * memory).sum(0) - (w[:, None] * memory[ids]).sum(0)
    new_memory = memory.clone()
    new_memory[ids] = deltas  # h_k <- Delta_k
    return fresh + beta * stale, new_memory


@register("aggregator", "fedstale", paper="FedStale: leveraging stale client updates in federated learning",
          arxiv="2405.04171")
class FedStale(Aggregator):
    """FedStale.

    Args:
        beta: weight of the stale updates in [0, 1] (0 = FedAvg with 1/p weights, 1 = FedVARP).
        probabilities: (N,) known participation probabilities; None = estimate them (FedAU's estimator).
        cutoff: interval cutoff of the estimator (None = none).
        server_lr: eta_g. batch_size: local minibatch size (None = full batch).
    """

    def __init__(self, *, beta: float = 0.5, probabilities: torch.Tensor | None = None,
                 cutoff: int | None = None, server_lr: float = 1.0, batch_size: int | None = None):
        super().__init__(server_lr=server_lr, batch_size=batch_size)
        self.beta = check_range("beta", beta, 0.0, 1.0)
        if probabilities is not None:
            probabilities = check_tensor("probabilities", torch.as_tensor(probabilities, dtype=torch.float64, device="cpu"),
                                         ndim=1, finite=True)
            if (probabilities <= 0).any() or (probabilities > 1).any():
                raise ValueError("probabilities must lie in (0, 1]")
        self.probabilities = probabilities
        self.cutoff = cutoff

    def _init_state(self, dtype: torch.dtype) -> None:
        self.memory = torch.zeros(self.num_clients, self.dim, dtype=dtype, device=self.device)  # (N, d) h_k
        self.estimator = IntervalEstimator(self.num_clients, self.cutoff, dtype, self.device)

    def inverse_p(self, ids: torch.Tensor) -> torch.Tensor:
        """1/p_k of clients ``ids``: known, or FedAU's running estimate."""
        if self.probabilities is not None:
            return 1.0 / self.probabilities.to(ids.device)[ids]
        return self.estimator.weights(ids)

    def aggregate(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], round: int, *,
                  staleness: Mapping[int, int] | None = None) -> torch.Tensor:
        self._require_setup()
        ids, deltas, _ = self._stack(x, updates, num_samples)
        alpha = self.alpha.to(x.dtype)
        inverse_p = self.inverse_p(ids).to(x.dtype)  # from intervals recorded before this round
        participated = torch.zeros(self.num_clients, dtype=torch.bool, device=self.device)
        participated[ids] = True
        self.estimator.update(participated)
        if len(ids) == 0:  # empty round: no step on stale memories alone
            self.last_weights = {}
            return x.clone()
        delta, self.memory = fedstale_step(deltas, ids, self.memory, alpha, inverse_p, self.beta)
        self._record(ids, alpha[ids] * inverse_p)
        return x + self.server_lr * delta

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "beta": self.beta, "probabilities": self.probabilities,
                "memory": self.memory.clone(), **self.estimator.state_dict()}
