"""FedVARP: stand in for absent clients with their last update (variance reduction over sampling).

Paper: "FedVARP: Tackling the Variance Due to Partial Client Participation in Federated
Learning", Jhunjhunwala, Sharma, Nagarkatti, Joshi, arXiv 2207.14130 (the catalog lists it as the
baseline of FedStale). Ordering as in IBM/fedau ``main.py`` (branch ``fedvarp``).

The update: server state x and ``y_j`` = the last update received from each client j (init 0);
clients are stateless. With ``ybar = (1/N) sum_j y_j``:

    v = ybar + (1/|S|) sum_{i in S} (Delta_i - y_i)        (SAGA-style: memory + fresh correction)
    y_i <- Delta_i for i in S
    x <- x + eta_g v

where N is the number of clients, S the clients heard from this round, Delta_i client i's fresh
update (local SGD as in FedAvg) and eta_g the server learning rate. Intuition: every round uses
*some* update of every client (the stored one for absent clients), so the noise from who happened
to be sampled cancels; the price is O(N d) server memory and, when some clients come rarely, very
stale memories (which FedStale tempers). FedStale with beta = 1 and uniform sampling is exactly
this.

Where it departs from FedAvg: the server keeps the last update of every client and adds the
stored updates of the absent ones (``ybar``); FedAvg (``weighting="participating"``) is
``v = (1/|S|) sum_{i in S} Delta_i``, the same formula without memory.

Choices:
- The memory-then-correction ordering of IBM/fedau: v uses the stored y_i, then y_i is replaced.
- Unweighted, as in the paper: 1/|S| and 1/N whatever the sample counts n_i (FedStale's
  alpha_k / p_k weights are the weighted generalization).
- A round with no update at all is skipped: the model and the memory stay (the stored updates are
  not replayed alone; see ``lab.federated.base``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from lab.federated.base import Aggregator
from lab.registry import register


def fedvarp_step(deltas: torch.Tensor, ids: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure FedVARP step: ``(v (d,), new memory (N, d))`` from this round's updates (M, d) of clients ``ids``."""
    if len(ids) == 0:
        return memory.mean(0), memory
    # v = ybar + (1/|S|) sum_{i in S} (Delta_i - y_i)
    v = memory.mean(0) + (deltas - memory[ids]).mean(0)
    new_memory = memory.clone()
    new_memory[ids] = deltas  # y_i <- Delta_i
    return v, new_memory


@register("aggregator", "fedvarp",
          paper="FedVARP: Tackling the Variance Due to Partial Client Participation in Federated Learning",
          arxiv="2207.14130",
          summary="FedVARP (the FedStale paper's baseline): stored updates of absent clients reduce variance")
class FedVARP(Aggregator):
    """FedVARP. Args: server_lr (eta_g), batch_size (local minibatch, None = full batch)."""

    def _init_state(self, dtype: torch.dtype) -> None:
        self.memory = torch.zeros(self.num_clients, self.dim, dtype=dtype, device=self.device)  # (N, d) y_j

    def aggregate(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], round: int, *,
                  staleness: Mapping[int, int] | None = None) -> torch.Tensor:
        self._require_setup()
        ids, deltas, _ = self._stack(x, updates, num_samples)
        if len(ids) == 0:  # empty round: skipped (the stored updates are not replayed alone)
            self.last_weights = {}
            return x.clone()
        v, self.memory = fedvarp_step(deltas, ids, self.memory)
        self._record(ids, torch.full((len(ids),), 1.0 / max(len(ids), 1), dtype=x.dtype, device=x.device))
        return x + self.server_lr * v

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memory": self.memory.clone()}
