"""The client side of one round as a deployment runs it: separate objects, everything in messages.

A simulator can share one algorithm object between the server and its clients; a deployment
cannot. :func:`client_round` is the whole client side of a round, written for the second case:
the client builds *its own* algorithm object from the same registry spec as the server, installs
what the server sent (the model and :meth:`~lab.federated.base.Aggregator.downlink_state`:
SCAFFOLD's c, the momentum variants' g, c and x^{r-1}) and what it kept itself
(:meth:`~lab.federated.base.Aggregator.client_state`: SCAFFOLD's c_i, ADMM's w_k and lambda_k),
runs the same ``local_updates`` the simulator runs, and returns its update, the extra vectors the
server needs (:meth:`~lab.federated.base.Aggregator.client_upload`: Delta c_i) and its new state.
A Flower ``ClientApp`` (``lab.federated.flower``) calls exactly this function; so does
:class:`PerClientLoop`, the plain Python loop over clients used by the benchmark.

Clients train either the vectorized toy problems (a :class:`toy_envs.federated.ClientData` of
one client) or a real ``nn.Module`` (:class:`ModuleData`: forward and ``backward()`` on the
module's own parameters; the digits MLP).

Minibatches: with ``batch_size=None`` (full local batch) local training is deterministic and a
per-client run equals the simulator's vectorized run to float rounding. With minibatches each
client draws from its own generator, seeded by (seed, round, client), whereas the vectorized
simulator draws all clients' minibatches from one stream: the runs then agree in distribution,
not number for number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from lab.federated.base import Aggregator
from lab.registry import make


def client_generator(seed: int, round: int, client_id: int) -> torch.Generator:
    """The minibatch generator of one client in one round (its own stream)."""
    state = np.random.SeedSequence([int(seed), int(round), int(client_id)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def client_algorithm(spec: str, problem: Any) -> Aggregator:
    """The client's own algorithm object, built from the same spec string as the server's."""
    algorithm = make("aggregator", spec) if isinstance(spec, str) else spec
    return algorithm.setup(problem.num_clients, problem.dim, problem, dtype=problem.x0.dtype)


@dataclass
class ClientReply:
    """What a client sends back after a round (and keeps)."""

    delta: torch.Tensor  # (d,) update Delta_i = y^K - x
    extras: dict[str, torch.Tensor]  # vectors besides the update (SCAFFOLD's Delta c_i)
    state: dict[str, torch.Tensor]  # what the client keeps for its next round
    num_samples: int  # n_i


def client_round(algorithm: Aggregator, data: Any, client_id: int, x: torch.Tensor,
                 downlink: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], *,
                 steps: int, lr: float, generator: torch.Generator) -> ClientReply:
    """One client's side of a round with its own ``algorithm`` object (see the module docstring).

    Args:
        algorithm: the client's algorithm object (``client_algorithm(spec, problem)``), set up.
        data: the client's data: a one-client ``ClientData`` or a :class:`ModuleData`.
        client_id: its index in the lab's client arrays (a Flower node's ``partition-id``).
        x: the model received (d,). downlink: the server state received with it.
        state: what this client kept from its previous round (empty at first).
        steps, lr, generator: K, eta_l and the minibatch stream.
    """
    algorithm.load_downlink_state(downlink)
    algorithm.load_client_state(client_id, state)
    ids = torch.tensor([int(client_id)])
    delta = algorithm.local_updates(x, ids, data, steps=steps, lr=lr, generator=generator)[0]
    extras = algorithm.client_upload(client_id)
    new_state = {k: v.clone() for k, v in algorithm.client_state(client_id).items()}
    return ClientReply(delta.detach().clone(), extras, new_state, int(data.num_samples[0]))


def client_idle(algorithm: Aggregator, data: Any, client_id: int, state: Mapping[str, torch.Tensor], *,
                steps: int, lr: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """An unselected client's local work (ADMM's ``continue_when_idle``); returns its new state."""
    algorithm.load_client_state(client_id, state)
    algorithm.idle_updates(torch.tensor([int(client_id)]), data, steps=steps, lr=lr, generator=generator)
    return {k: v.clone() for k, v in algorithm.client_state(client_id).items()}


class PerClientLoop:
    """Local training one client at a time through :func:`client_round`, each with its own
    algorithm object and state, in a plain Python loop (the benchmark's and tests' reference for
    what a Flower deployment computes). Plug into ``simulate(..., local_training=...)``."""

    def __init__(self, problem: Any, spec: str, *, seed: int = 0, module: bool = False):
        self.problem, self.spec, self.seed, self.module = problem, spec, seed, module
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.algorithm = client_algorithm(spec, problem)  # the clients' object (one per process)

    def data(self, client_id: int) -> Any:
        return ModuleData.from_problem(self.problem, client_id) if self.module else self.problem.client(client_id)

    def train(self, server: Aggregator, x: torch.Tensor, ids: torch.Tensor, round: int, *, steps: int,
              lr: float, generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        downlink = {k: v.clone() for k, v in server.downlink_state().items()}  # what the message carries
        rows = []
        for cid in ids.tolist():
            reply = client_round(self.algorithm, self.data(cid), cid, x.clone(), downlink, self.states.get(cid, {}),
                                 steps=steps, lr=lr, generator=client_generator(self.seed, round, cid))
            self.states[cid] = reply.state
            server.server_receive(cid, reply.extras)
            rows.append(reply.delta)
        server.local_steps, server.local_lr = steps, lr
        return torch.stack(rows), [round] * len(rows)

    def idle(self, server: Aggregator, ids: torch.Tensor, round: int, *, steps: int, lr: float,
             generator: torch.Generator) -> None:
        for cid in ids.tolist():
            if cid in self.states:
                self.states[cid] = client_idle(self.algorithm, self.data(cid), cid, self.states[cid], steps=steps,
                                               lr=lr, generator=client_generator(self.seed, round, cid))


class ModuleData:
    """One client's data for a real ``nn.Module``: the ``ClientData`` interface (``grads``,
    ``batch``, ``X``/``y``/``mask``, ``num_samples``) with gradients from ``loss.backward()`` on
    the module's own parameters, so every algorithm's ``local_updates`` trains the module.

    ``grads(x, X, y, mask)`` writes the flat vector ``x`` (1, d) into the module
    (``vector_to_parameters``), runs the forward pass and the masked mean cross-entropy, calls
    ``backward()`` and returns the flattened ``.grad`` of every parameter (1, d).
    """

    kind = "classification"
    grad_batch = None

    def __init__(self, model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                 client_id: int):
        self.model = model
        self.X, self.y, self.mask = X.unsqueeze(0), y.unsqueeze(0), mask.unsqueeze(0)  # (1, n, ...)
        self.num_samples = mask.sum().long().reshape(1)
        self.client_ids = torch.tensor([int(client_id)])

    @classmethod
    def from_problem(cls, problem: Any, client_id: int) -> "ModuleData":
        """The client's data of a ``digits_mlp`` problem, trained on a copy of its ``nn.Module``."""
        module = getattr(problem.loss_fn, "keywords", {}).get("model")
        if module is None:
            raise ValueError(f"problem {problem.name!r} has no nn.Module; module clients need digits_mlp")
        import copy

        return cls(copy.deepcopy(module), problem.X[client_id], problem.y[client_id], problem.mask[client_id],
                   client_id)

    def __len__(self) -> int:
        return 1

    def batch(self, generator: torch.Generator, batch_size: int | None):
        if batch_size is None or batch_size >= self.X.shape[1]:
            return self.X, self.y, self.mask
        u = torch.rand(1, batch_size, generator=generator, dtype=torch.float64)
        idx = (u * self.num_samples[:, None]).long()  # (1, B)
        return self.X[:, idx[0]], self.y[:, idx[0]], torch.ones(idx.shape, dtype=self.mask.dtype)

    def grads(self, x: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        params = list(self.model.parameters())
        with torch.no_grad():  # copy x into the module's own parameters (no aliasing of x)
            for p, piece in zip(params, x[0].split([q.numel() for q in params])):
                p.copy_(piece.view_as(p))
        self.model.zero_grad(set_to_none=False)
        with torch.enable_grad():
            logits = self.model(X[0])  # (n, C)
            nll = torch.nn.functional.cross_entropy(logits, y[0].long(), reduction="none")  # (n,)
            loss = (mask[0] * nll).sum() / mask[0].sum().clamp_min(1.0)
            loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in params]).detach().unsqueeze(0).to(x.dtype)  # (1, d)

    def normal_equations(self):
        raise ValueError("normal_equations needs a least-squares problem, got a module client")

    def select(self, keep: torch.Tensor) -> "ModuleData":
        if not bool(keep.all()):
            raise ValueError("a module client holds one client; select() can only keep it")
        return self


__all__ = ["client_round", "client_idle", "client_algorithm", "client_generator", "ClientReply", "PerClientLoop",
           "ModuleData"]
