"""FedAvg-M and SCAFFOLD-M: server momentum mixed into every local step (and their VR extensions).

Paper: "Momentum Benefits Non-IID Federated Learning Simply and Provably", Cheng, Huang, Wu, Yuan,
arXiv 2306.16504 (ICLR 2024). The equations below are the lab's reading of the paper (the spec
sheet marks them [unverified]); they are tested through their limiting cases and behaviour.

The update: server model x^r and momentum g^r (init 0); SCAFFOLD-M adds c^r and client c_i
(init 0). Client i in S_r starts from x_i^{r,0} = x^r and for k = 0..K-1 steps
x_i^{r,k+1} = x_i^{r,k} - eta d_i^{r,k}:

    FedAvg-M:    d = beta * g_i(x_i^{r,k}; xi) + (1 - beta) * g^r
    SCAFFOLD-M:  d = beta * (g_i(x_i^{r,k}; xi) - c_i + c) + (1 - beta) * g^r
    VR (STORM):  d = g_i(x_i^{r,k}; xi) + (1 - beta) * (g^r - g_i(x^{r-1}; xi))   [+ (c - c_i) for SCAFFOLD-M-VR]

(the same sample xi at both points of the VR correction). Server:

    g^{r+1} = (1 / (eta K |S_r|)) sum_{i in S_r} (x^r - x_i^{r,K})     (mean of all local directions)
    x^{r+1} = x^r - gamma g^{r+1}
    SCAFFOLD-M: c_i^+ = (1/K) sum_k g_i(x_i^{r,k}; xi) for i in S_r;  c <- c + (1/N) sum_{i in S_r} (c_i^+ - c_i)

where S_r is the set of clients heard from in round r, N the number of clients, K the local steps,
eta the local and gamma the server learning rate (``server_lr``), beta in (0, 1] the momentum
weight, g_i(.; xi) client i's gradient on the minibatch xi, and c, c_i SCAFFOLD's control
variates. Intuition: with beta small, each local step mostly follows the global direction g^r, so
a client cannot drift far toward its own optimum even after many local steps; at a fixed point
g = 0 and the local steps shrink by the factor beta.

Where it departs from FedAvg and SCAFFOLD: the local direction mixes the client gradient with the
server's g^r, and the server steps along g^{r+1} with its own rate gamma. Limiting cases (tested):
beta = 1 and gamma = eta K gives FedAvg with ``weighting="participating"``; SCAFFOLD-M at
beta = 1 is SCAFFOLD (option II) with eta_g = gamma / (eta K).

Choices:
- ``server_lr`` (gamma) defaults to ``None`` = eta K, the value that makes beta = 1 plain
  FedAvg; ``beta`` defaults to 0.1 (the theory asks for small beta; the paper's tuned values were
  not retrieved).
- g^0 = 0 (the spec also allows a minibatch gradient at x^0), so the first round's local steps
  are plain SGD with step eta * beta.
- The VR variants need g^{r} and x^{r-1}; in the first round (no x^{r-1} yet) the correction
  term is left out, so that round is plain local SGD. ``variance_reduction=True`` selects the VR
  extension.
- SCAFFOLD-M commits c_i^+ only when the server accepts the client's update, as ``scaffold``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from lab.checks import check_positive, check_range
from lab.federated.base import Aggregator, local_sgd
from lab.registry import register

_PAPER = "Momentum Benefits Non-IID Federated Learning Simply and Provably"


class MomentumFL(Aggregator):
    """Shared engine of ``fedavg_m`` and ``scaffold_m`` (``control_variates`` switches SCAFFOLD-M)."""

    control_variates = False

    def __init__(self, *, beta: float = 0.1, server_lr: float | None = None, variance_reduction: bool = False,
                 batch_size: int | None = None):
        super().__init__(server_lr=1.0 if server_lr is None else server_lr, batch_size=batch_size)
        self.gamma = None if server_lr is None else check_positive("server_lr", server_lr)
        self.beta = check_range("beta", beta, 0.0, 1.0, lo_open=True)
        self.variance_reduction = bool(variance_reduction)
        self.uplink_vectors = 1
        self.downlink_vectors = 2 + int(self.control_variates) + int(self.variance_reduction)
        self._proposed: dict[int, torch.Tensor] = {}

    def _init_state(self, dtype: torch.dtype) -> None:
        self.g = torch.zeros(self.dim, dtype=dtype, device=self.device)  # (d,) momentum g^r
        self.x_prev: torch.Tensor | None = None  # x^{r-1} (VR only)
        if self.control_variates:
            self.c = torch.zeros(self.dim, dtype=dtype, device=self.device)
            self.c_clients = torch.zeros(self.num_clients, self.dim, dtype=dtype, device=self.device)
        self._proposed = {}

    def local_updates(self, x: torch.Tensor, client_ids: torch.Tensor, data: Any, *, steps: int,
                      lr: float, generator: torch.Generator) -> torch.Tensor:
        client_ids = self._client_ids(client_ids, data)
        self.local_steps, self.local_lr = steps, lr
        beta = self.beta
        correction = self.c - self.c_clients[client_ids] if self.control_variates else None  # (M, d)
        if self.variance_reduction:
            use_anchor = self.x_prev is not None
            offset = (1 - beta) * self.g if use_anchor else torch.zeros_like(self.g)
            offset = offset + correction if correction is not None else offset.expand(len(data), -1)
            result = local_sgd(data, x, steps=steps, lr=lr, generator=generator, batch_size=self.batch_size,
                               offset=offset, anchor=self.x_prev if use_anchor else None,
                               anchor_scale=1 - beta if use_anchor else 0.0)
        else:
            offset = (1 - beta) * self.g
            offset = offset + beta * correction if correction is not None else offset.expand(len(data), -1)
            result = local_sgd(data, x, steps=steps, lr=lr, generator=generator, batch_size=self.batch_size,
                               grad_scale=beta, offset=offset)
        if self.control_variates:
            for i, row in zip(client_ids.tolist(), result.mean_grad):
                self._proposed[i] = row
        return result.delta

    # ---- the wire: g (and c, x^{r-1}) down; Delta c_i up; c_i stays on the client --------
    def downlink_state(self):
        state = {"g": self.g}
        if self.control_variates:
            state["c"] = self.c
        if self.variance_reduction and self.x_prev is not None:
            state["x_prev"] = self.x_prev
        return state

    def load_downlink_state(self, state):
        self.g = state["g"].to(self.g.dtype).clone()
        if self.control_variates:
            self.c = state["c"].to(self.g.dtype).clone()
        if self.variance_reduction:
            self.x_prev = state["x_prev"].clone() if "x_prev" in state else None

    def client_state(self, client_id):
        return {"c_i": self.c_clients[client_id]} if self.control_variates else {}

    def load_client_state(self, client_id, state):
        if self.control_variates and "c_i" in state:
            self.c_clients[client_id] = state["c_i"]

    def client_upload(self, client_id):
        if not self.control_variates:
            return {}
        c_new = self._proposed.pop(client_id)
        delta_c = c_new - self.c_clients[client_id]
        self.c_clients[client_id] = c_new
        return {"delta_c": delta_c}

    def server_receive(self, client_id, extras):
        if self.control_variates and "delta_c" not in extras:
            raise ValueError(f"client {client_id}'s reply has no delta_c (Delta c_i): was it trained with "
                             f"{type(self).__name__}'s client side?")
        if self.control_variates:
            self._proposed[client_id] = self.c_clients[client_id] + extras["delta_c"].to(self.g.dtype)

    def aggregate(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], round: int, *,
                  staleness: Mapping[int, int] | None = None) -> torch.Tensor:
        self._require_setup()
        ids, deltas, _ = self._stack(x, updates, num_samples)
        if len(ids) == 0:
            self.last_weights = {}
            return x.clone()
        if self.local_steps is None:
            raise ValueError("aggregate needs local_steps and local_lr: run local_updates first")
        eta_k = self.local_lr * self.local_steps
        gamma = eta_k if self.gamma is None else self.gamma
        # g^{r+1} = (1/(eta K |S|)) sum_i (x - x_i^K) = -mean(Delta_i) / (eta K)
        self.g = -deltas.mean(0) / eta_k
        self._record(ids, torch.full((len(ids),), gamma / eta_k / len(ids), dtype=x.dtype, device=x.device))
        if self.control_variates:
            for i in ids.tolist():
                c_new = self._proposed.pop(i)
                self.c += (c_new - self.c_clients[i]) / self.num_clients
                self.c_clients[i] = c_new
        self.x_prev = x.clone()
        # x^{r+1} = x^r - gamma g^{r+1}
        return x - gamma * self.g

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "beta": self.beta, "server_lr": self.gamma, "g": self.g.clone(),
                 "variance_reduction": self.variance_reduction,
                 "x_prev": None if self.x_prev is None else self.x_prev.clone()}
        if self.control_variates:
            state.update(c=self.c.clone(), c_clients=self.c_clients.clone())
        return state


@register("aggregator", "fedavg_m", paper=_PAPER, arxiv="2306.16504",
          summary="FedAvg-M: local steps mix the client gradient with the server momentum (VR option)")
class FedAvgM(MomentumFL):
    """FedAvg-M (``variance_reduction=True``: FedAvg-M-VR). Args: beta, server_lr (gamma; None = eta K), batch_size."""

    control_variates = False


@register("aggregator", "scaffold_m", paper=_PAPER, arxiv="2306.16504",
          summary="SCAFFOLD-M: SCAFFOLD's control variates plus server momentum (VR option)")
class ScaffoldM(MomentumFL):
    """SCAFFOLD-M (``variance_reduction=True``: SCAFFOLD-M-VR). Args: beta, server_lr (gamma; None = eta K), batch_size."""

    control_variates = True
