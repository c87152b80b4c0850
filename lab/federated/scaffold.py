"""SCAFFOLD: control variates that cancel client drift.

Paper: "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", Karimireddy et al.,
arXiv 1910.06378. The catalog files it under "Momentum Benefits Non-IID Federated Learning Simply
and Provably", Cheng et al., arXiv 2306.16504, whose SCAFFOLD-M reduces to it at beta = 1.

The update: server model x and control variate c (init 0); client control variates c_i (init 0).
Invariant: ``c = (1/N) sum_i c_i`` after every round.

    client i in S:  y <- x;  K steps  y <- y - eta_l (g_i(y) - c_i + c)
                    c_i^+ = option II: c_i - c + (x - y) / (K eta_l)   (= mean raw gradient on the path)
                            option I:  grad F_i(x) on the full local data
                    sends Delta y_i = y - x and Delta c_i = c_i^+ - c_i
    server:         x <- x + (eta_g / |S|) sum_{i in S} Delta y_i
                    c <- c + (1/N) sum_{i in S} Delta c_i

where S is the set of clients heard from this round, N the number of clients, K the local steps,
eta_l and eta_g the local and server learning rates, g_i(y) client i's minibatch gradient at y and
grad F_i its full local gradient. Intuition: ``c - c_i`` estimates ``grad F - grad F_i``, so each
local path follows the global gradient; at the optimum every corrected direction vanishes and the
drift is gone.

Where it departs from FedAvg: FedAvg is the same loop with c = c_i = 0. SCAFFOLD adds the
correction ``c - c_i`` to every local step, keeps one d-vector per client, averages the updates
with 1/|S| (not n_i weights), and sends two d-vectors each way per round (x and c down, Delta y
and Delta c up).

Choices:
- Option II (the cheap control-variate update) is the default; option I evaluates
  grad F_i(x) on the client's full local batch (the paper's "larger batch").
- c_i^+ is proposed during local training and committed only when the server accepts the update
  (``aggregate``), so a dropped or corrupted upload keeps ``c = mean c_i``.
- The server weights are 1/|S| whatever the sample counts n_i (Flower's ``niid_bench`` baseline
  weights Delta y and Delta c by ``num_examples`` instead).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from lab.checks import check_choice
from lab.federated.base import Aggregator, local_sgd, weighted_step
from lab.registry import register


@register("aggregator", "scaffold", paper="Momentum Benefits Non-IID Federated Learning Simply and Provably",
          arxiv="2306.16504",
          summary="SCAFFOLD (Karimireddy et al., arXiv:1910.06378): control variates remove client drift")
class Scaffold(Aggregator):
    """SCAFFOLD.

    Args:
        option: ``"II"`` (default, the cheap control-variate update) or ``"I"`` (a full local gradient at x).
        server_lr: eta_g (paper default 1).
        batch_size: local minibatch size (None = full batch).
    """

    uplink_vectors = 2
    downlink_vectors = 2

    def __init__(self, *, option: str = "II", server_lr: float = 1.0, batch_size: int | None = None):
        super().__init__(server_lr=server_lr, batch_size=batch_size)
        self.option = check_choice("option", option, ("I", "II"))
        self._proposed: dict[int, torch.Tensor] = {}

    def _init_state(self, dtype: torch.dtype) -> None:
        self.c = torch.zeros(self.dim, dtype=dtype, device=self.device)  # (d,)
        self.c_clients = torch.zeros(self.num_clients, self.dim, dtype=dtype, device=self.device)  # (N, d)
        self._proposed = {}

    def local_updates(self, x: torch.Tensor, client_ids: torch.Tensor, data: Any, *, steps: int,
                      lr: float, generator: torch.Generator) -> torch.Tensor:
        client_ids = self._client_ids(client_ids, data)
        self.local_steps, self.local_lr = steps, lr
        c_i = self.c_clients[client_ids]  # (M, d)
        result = local_sgd(data, x, steps=steps, lr=lr, generator=generator, batch_size=self.batch_size,
                           offset=self.c - c_i)
        if self.option == "II":
            # c_i^+ = c_i - c + (x - y)/(K eta_l) = mean raw gradient along the path
            c_new = result.mean_grad
        else:
            c_new = local_sgd(data, x, steps=1, lr=1.0, generator=generator).mean_grad  # full-batch grad F_i(x)
        for i, row in zip(client_ids.tolist(), c_new):
            self._proposed[i] = row
        return result.delta

    # ---- the wire: c down; Delta c_i up; c_i stays on the client ---------------------------
    def downlink_state(self):
        return {"c": self.c}

    def load_downlink_state(self, state):
        self.c = state["c"].to(self.c.dtype).clone()

    def client_state(self, client_id):
        return {"c_i": self.c_clients[client_id]}

    def load_client_state(self, client_id, state):
        if "c_i" in state:
            self.c_clients[client_id] = state["c_i"]

    def client_upload(self, client_id):
        c_new = self._proposed.pop(client_id)
        delta_c = c_new - self.c_clients[client_id]  # Delta c_i = c_i^+ - c_i
        self.c_clients[client_id] = c_new
        return {"delta_c": delta_c}

    def server_receive(self, client_id, extras):
        if "delta_c" not in extras:
            raise ValueError(f"client {client_id}'s reply has no delta_c (Delta c_i): was it trained with "
                             f"{type(self).__name__}'s client side?")
        # the server's mirror of c_i plus the received Delta c_i: aggregate adds Delta c_i / N to c
        self._proposed[client_id] = self.c_clients[client_id] + extras["delta_c"].to(self.c.dtype)

    def aggregate(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], round: int, *,
                  staleness: Mapping[int, int] | None = None) -> torch.Tensor:
        self._require_setup()
        ids, deltas, _ = self._stack(x, updates, num_samples)
        w = torch.full((len(ids),), 1.0 / max(len(ids), 1), dtype=x.dtype, device=x.device)
        self._record(ids, w)
        for i in ids.tolist():
            if i not in self._proposed:
                raise ValueError(f"client {i} has no proposed control variate: call local_updates first")
            c_new = self._proposed.pop(i)
            # c <- c + (1/N) (c_i^+ - c_i);  c_i <- c_i^+
            self.c += (c_new - self.c_clients[i]) / self.num_clients
            self.c_clients[i] = c_new
        return weighted_step(x, deltas, w, self.server_lr)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "option": self.option, "c": self.c.clone(),
                "c_clients": self.c_clients.clone()}
