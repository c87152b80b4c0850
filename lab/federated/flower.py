"""Any lab algorithm as a Flower ``Strategy`` (needs the ``flower`` extra: ``pip install trainlab[flower]``).

    from lab.federated.flower import make_strategy, make_client
    strategy = make_strategy(FedAU(), x0, num_clients=N, problem=problem)   # a flwr.server.strategy.Strategy
    client = make_client(algorithm, problem, client_id=3, local_steps=5, lr=0.05)  # a flwr NumPyClient
    history, x = run_flower(strategy, [client, ...], rounds=10)    # Flower's own server loop, in-process

The strategy keeps the global model as the lab's flat vector x. ``aggregate_fit`` reads each
``FitRes``: its parameters (the client's model, any list of arrays, flattened in order), its
``num_examples`` (n_i) and ``metrics["client_id"]`` (the lab's client index; without it, the
proxy's ``cid`` is used) and optionally ``metrics["staleness"]``; it forms the update
``Delta_i = x_i - x`` and calls ``algorithm.aggregate(x, updates, num_samples, server_round - 1)``,
exactly what :func:`lab.federated.simulate` does. Results whose parameters are not finite are
refused and listed in ``strategy.dropped`` (Flower's own ``failures`` too), never aggregated.

:func:`run_flower` drives Flower's own ``flwr.server.Server`` round loop (``configure_fit``, clients
fitted in Flower's thread pool, ``aggregate_fit``, centralized ``evaluate``) with in-process client
proxies: a Flower simulation without Flower's Ray-based engine, which needs Ray (not a dependency).

Flower's built-in ``aggregate`` normalizes weights by their sum, so algorithms such as FedAU
(``1/N`` normalization with learned weights) or FedVARP (stored updates of absent clients) cannot
be expressed by passing weights as ``num_examples``; wrapping the lab object keeps their exact
semantics. Client-side state (SCAFFOLD's c_i) lives in the algorithm object, so
:func:`make_client` shares one object between server and clients: a simulation, not a deployment.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lab.federated.base import Aggregator


def _flatten(arrays: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([torch.as_tensor(np.asarray(a)).reshape(-1) for a in arrays]).to(dtype)


def _unflatten(x: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape)) if shape else 1
        out.append(x[start:start + size].reshape(shape).detach().cpu().numpy().copy())
        start += size
    return out


def make_strategy(algorithm: Aggregator, initial: torch.Tensor, num_clients: int, *, problem: Any = None,
                  shapes: list[tuple[int, ...]] | None = None, fraction_fit: float = 1.0,
                  min_fit_clients: int = 1, local_steps: int = 1, lr: float = 0.1):
    """A ``flwr.server.strategy.Strategy`` that runs ``algorithm``'s server side.

    Args:
        algorithm: a lab aggregator (``setup`` is called here with ``num_clients``).
        initial: the initial global model, a flat vector (d,).
        num_clients: N, the number of clients the algorithm keeps state for.
        problem: optional problem, passed to ``setup`` and used by ``evaluate`` (global loss).
        shapes: array shapes of the Flower parameters (default: one flat array).
        fraction_fit, min_fit_clients: client sampling in ``configure_fit``.
        local_steps, lr: sent to the clients in the fit config.
    """
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import Strategy

    x0 = initial.detach().clone()
    algorithm.setup(num_clients, x0.numel(), problem, dtype=x0.dtype)
    layout = shapes or [tuple(x0.shape)]

    class LabStrategy(Strategy):
        """Flower strategy around a lab aggregator; ``x`` is the current global model."""

        def __init__(self):
            super().__init__()
            self.algorithm, self.x, self.dropped = algorithm, x0, []

        def __repr__(self) -> str:
            return f"LabStrategy({type(self.algorithm).__name__})"

        def initialize_parameters(self, client_manager):
            return ndarrays_to_parameters(_unflatten(self.x, layout))

        def configure_fit(self, server_round, parameters, client_manager):
            wanted = max(min_fit_clients, int(fraction_fit * client_manager.num_available()))
            clients = client_manager.sample(num_clients=wanted, min_num_clients=min_fit_clients)
            config = {"server_round": server_round, "local_steps": local_steps, "lr": lr}
            return [(client, FitIns(parameters, config)) for client in clients]

        def aggregate_fit(self, server_round, results, failures):
            for failure in failures:
                self.dropped.append({"round": server_round, "client": None, "reason": f"flower failure: {failure!r}"})
            updates, num_samples, staleness = {}, {}, {}
            for proxy, fit_res in results:
                cid = int(fit_res.metrics.get("client_id", getattr(proxy, "cid", -1)))
                model = _flatten(parameters_to_ndarrays(fit_res.parameters), self.x.dtype)
                if model.shape != self.x.shape or not torch.isfinite(model).all():
                    self.dropped.append({"round": server_round, "client": cid,
                                         "reason": "non-finite or mis-shaped parameters"})
                    continue
                updates[cid] = model - self.x
                num_samples[cid] = int(fit_res.num_examples)
                staleness[cid] = int(fit_res.metrics.get("staleness", 0))
            self.x = self.algorithm.aggregate(self.x, updates, num_samples, server_round - 1, staleness=staleness)
            metrics = {"accepted": len(updates), "dropped": len(results) - len(updates) + len(failures)}
            return ndarrays_to_parameters(_unflatten(self.x, layout)), metrics

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            if problem is None:
                return None
            x = _flatten(parameters_to_ndarrays(parameters), self.x.dtype)
            metrics = {} if problem.x_star is None else {"distance": problem.distance(x)}
            return problem.global_loss(x), metrics

    return LabStrategy()


def make_client(algorithm: Aggregator, problem: Any, client_id: int, *, local_steps: int, lr: float,
                seed: int = 0, shapes: list[tuple[int, ...]] | None = None):
    """A ``flwr.client.NumPyClient`` whose ``fit`` runs ``algorithm.local_update`` on client ``client_id``."""
    from flwr.client import NumPyClient

    generator = torch.Generator().manual_seed(seed)
    data = problem.client(client_id)
    layout = shapes or [(problem.dim,)]

    class LabClient(NumPyClient):
        def get_parameters(self, config):
            return _unflatten(problem.x0, layout)

        def fit(self, parameters, config):
            x = _flatten(parameters, problem.x0.dtype)
            steps = int(config.get("local_steps", local_steps))
            step_lr = float(config.get("lr", lr))
            delta = algorithm.local_update(x, client_id, data, steps=steps, lr=step_lr, generator=generator)
            return _unflatten(x + delta, layout), int(data.num_samples[0]), {"client_id": client_id}

    return LabClient()


def run_flower(strategy, clients: list, rounds: int, *, max_workers: int | None = 1):
    """Run Flower's server loop for ``rounds`` rounds over in-process ``clients`` (NumPyClients).

    ``max_workers`` sizes Flower's client thread pool; the default 1 fits the clients one after
    the other (the lab's clients share one algorithm object, and the run stays deterministic).

    Each client is wrapped in a ``ClientProxy`` that calls it directly (no transport). Returns
    ``(flower_history, final_parameters_as_flat_numpy)``; the strategy may be a lab strategy
    (:func:`make_strategy`) or any Flower strategy, e.g. ``flwr.server.strategy.FedAvg``.
    """
    from flwr.common import GetPropertiesRes, Status, Code, parameters_to_ndarrays
    from flwr.server import Server
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy

    class InProcessProxy(ClientProxy):
        """A ClientProxy that calls a local Flower client object."""

        def __init__(self, cid: str, client):
            super().__init__(cid)
            self.client = client.to_client()

        def get_properties(self, ins, timeout, group_id):
            return GetPropertiesRes(Status(Code.OK, ""), {})

        def get_parameters(self, ins, timeout, group_id):
            return self.client.get_parameters(ins)

        def fit(self, ins, timeout, group_id):
            return self.client.fit(ins)

        def evaluate(self, ins, timeout, group_id):
            return self.client.evaluate(ins)

        def reconnect(self, ins, timeout, group_id):
            raise NotImplementedError("in-process clients do not reconnect")

    manager = SimpleClientManager()
    for i, client in enumerate(clients):
        manager.register(InProcessProxy(str(i), client))
    server = Server(client_manager=manager, strategy=strategy)
    server.set_max_workers(max_workers)
    history, _ = server.fit(num_rounds=rounds, timeout=None)
    final = np.concatenate([a.reshape(-1) for a in parameters_to_ndarrays(server.parameters)])
    return history, final
