"""FedAvg: local SGD on the clients, a weighted average of their updates on the server.

Paper: "Communication-Efficient Learning of Deep Networks from Decentralized Data", McMahan et
al., arXiv 1602.05629. The catalog lists it as the baseline of "A Lightweight Method for Tackling
Unknown Participation Statistics in Federated Averaging", Wang & Ji, arXiv 2306.03401. Server
momentum (FedAvgM): "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", Hsu, Qi, Brown, arXiv 1909.06335, as in Flower's ``FedAvgM``.

The update: round r, participating set S_r, server model x^r:

    client i in S_r:  y <- x^r; K steps y <- y - eta_l grad f_i(y; xi);  Delta_i = y - x^r
    server:           x^{r+1} = x^r + eta_g sum_{i in S_r} w_i Delta_i

where K is the number of local steps, eta_l the local and eta_g the server learning rate,
grad f_i(y; xi) the gradient of client i's loss on a fresh minibatch xi, Delta_i the update client
i sends, and w_i its weight (``weighting``):

- ``"samples"`` (default, the paper): ``w_i = n_i / sum_{j in S_r} n_j`` (= Flower's FedAvg), with
  n_i the number of examples client i reports;
- ``"participating"``: ``w_i = 1 / |S_r|``;
- ``"all"``: ``w_i = 1 / N`` over all N clients (FedAU's ``average_all`` baseline);
- ``"known_prob"``: ``w_i = alpha_i / p_i`` with the objective weights alpha_i and the *true*
  participation probabilities p_i (an oracle; unbiased for ``sum_i alpha_i F_i``; FedStale with
  beta = 0).

Intuition: each client walks K steps toward its own optimum; averaging the walks moves the server
toward the optimum of the average, at one exchange per K steps instead of one per step.

Server momentum (``server_momentum`` beta > 0, FedAvgM): with the pseudo-gradient
``g = -sum_i w_i Delta_i``, ``v = g`` in the first round and ``v <- beta v + g`` after,
``x <- x - eta_g v`` (no Nesterov, no dampening; the effective server step is about
eta_g / (1 - beta)). This is *server* momentum; the catalog's ``fedavg_m`` is Cheng et al.'s
momentum inside the local steps.

Where it departs from FedAvg: it is the parent. FedAU (``fedau``) replaces w_i by learned
estimates of alpha_i / p_i; FedVARP and FedStale add the stored updates of absent clients;
SCAFFOLD, FedAvg-M and SCAFFOLD-M change the local steps. Under heterogeneous participation the
first three weightings converge near ``argmin sum_i p_i F_i`` rather than
``argmin sum_i alpha_i F_i``; FedAU removes that bias without knowing p_i. With many local steps
on non-IID data the fixed point also moves away from x* (client drift; see ``scaffold`` and
``fedavg_m``).

Choices:
- Four weightings in one class; the default ``"samples"`` is the paper's and Flower's, and
  ``n_i`` is the count the client reports (it must be a positive number).
- Server momentum follows Flower's ``FedAvgM``: the buffer starts at the first pseudo-gradient.
- A round with no accepted update is skipped: x and v stay as they are (Flower's
  ``FedAvgM.aggregate_fit`` returns no parameters without results, so its momentum does not coast
  either).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from lab.checks import check_choice, check_range, check_tensor
from lab.federated.base import Aggregator, weighted_step
from lab.registry import register

WEIGHTINGS = ("samples", "participating", "all", "known_prob")


def fedavg_weights(n: torch.Tensor, ids: torch.Tensor, weighting: str, num_clients: int,
                   alpha: torch.Tensor | None = None, probabilities: torch.Tensor | None = None) -> torch.Tensor:
    """The weights ``w_i`` (M,) of the participating clients ``ids`` with sample counts ``n``."""
    if n.numel() == 0:
        return n
    if weighting == "samples":
        return n / n.sum()
    if weighting == "participating":
        return torch.full_like(n, 1.0 / n.numel())
    if weighting == "all":
        return torch.full_like(n, 1.0 / num_clients)
    return (alpha[ids] / probabilities.to(alpha.device)[ids]).to(n.dtype)


@register("aggregator", "fedavg", paper="A Lightweight Method for Tackling Unknown Participation "
          "Statistics in Federated Averaging", arxiv="2306.03401",
          summary="FedAvg (McMahan et al., arXiv:1602.05629): weighted average of local-SGD updates")
class FedAvg(Aggregator):
    """FedAvg.

    Args:
        weighting: ``"samples"``, ``"participating"``, ``"all"`` or ``"known_prob"``.
        probabilities: (N,) true participation probabilities, required for ``"known_prob"``.
        server_lr: eta_g (1.0 = plain averaging of client models).
        server_momentum: beta of FedAvgM's server momentum (0 = none, Flower's default).
        batch_size: local minibatch size B (None = full local batch).
    """

    def __init__(self, *, weighting: str = "samples", probabilities: torch.Tensor | None = None,
                 server_lr: float = 1.0, server_momentum: float = 0.0, batch_size: int | None = None):
        super().__init__(server_lr=server_lr, batch_size=batch_size)
        self.server_momentum = check_range("server_momentum", server_momentum, 0.0, 1.0, hi_open=True)
        self.momentum: torch.Tensor | None = None
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        if weighting == "known_prob":
            if probabilities is None:
                raise ValueError("probabilities must be given for weighting='known_prob'")
            probabilities = check_tensor("probabilities", torch.as_tensor(probabilities, dtype=torch.float64, device="cpu"),
                                         ndim=1, finite=True)
            if (probabilities <= 0).any() or (probabilities > 1).any():
                raise ValueError("probabilities must lie in (0, 1]")
        self.probabilities = probabilities

    def aggregate(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], round: int, *,
                  staleness: Mapping[int, int] | None = None) -> torch.Tensor:
        self._require_setup()
        ids, deltas, n = self._stack(x, updates, num_samples)
        w = fedavg_weights(n, ids, self.weighting, self.num_clients, self.alpha, self.probabilities)
        self._record(ids, w)
        if len(ids) == 0:  # empty round: no step, the momentum buffer is left alone (as Flower)
            return x.clone()
        if not self.server_momentum:
            return weighted_step(x, deltas, w, self.server_lr)
        # g = -sum_i w_i Delta_i;  v = g (first round) or beta v + g;  x <- x - eta_g v
        g = -(w[:, None] * deltas).sum(0)
        self.momentum = g if self.momentum is None else self.server_momentum * self.momentum + g
        return x - self.server_lr * self.momentum

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weighting": self.weighting, "probabilities": self.probabilities,
                "server_momentum": self.server_momentum,
                "momentum": None if self.momentum is None else self.momentum.clone()}
