"""Every lab aggregator as a Flower ``ServerApp`` + ``ClientApp`` (Flower's Message API).

Needs the ``flower`` extra (``pip install trainlab[flower]``; ``flwr[simulation]`` adds Ray for
Flower's simulation engine).

    from lab.experiments.federated import FederatedConfig
    from lab.federated.flower import client_app, server_app
    from flwr.simulation import run_simulation

    cfg = FederatedConfig(algorithm="scaffold", num_clients=8, rounds=20)
    histories = []
    run_simulation(server_app(cfg, results=histories), client_app(), num_supernodes=8)
    histories[0]["distance"]          # the same History as lab.experiments.run("federated", cfg)

The server is the lab's own round loop (:func:`lab.federated.simulate`: participation, deadlines,
aggregation, records) with the local training of each round done by Flower clients, reached only
through messages (:class:`FlowerClients`). Built from the same config and spec strings as the
``federated`` experiment, so a Flower run and a lab run are comparable number for number.

What crosses the wire, per round and participating client (``message_type="train"``):

- server -> client: ``"model"`` (an ArrayRecord: the global model, one array per layer for the
  digits MLP, one flat array for the vector problems), ``"downlink"`` (the algorithm's
  :meth:`~lab.federated.base.Aggregator.downlink_state`: SCAFFOLD's c, FedAvg-M/SCAFFOLD-M's
  server direction g, c and x^{r-1}), ``"config"`` (a ConfigRecord: the round, K, eta_l, the
  algorithm spec and everything needed to build the client's data partition);
- client -> server: ``"update"`` (Delta_i, same layout as the model), ``"extras"`` (SCAFFOLD's
  Delta c_i), ``"metrics"`` (a MetricRecord: ``partition-id``, ``num-examples`` and
  ``base-round``, the round of the model it trained on, from which the server computes the
  staleness that ``async_inversion`` needs).

Identity: a client is the lab's client ``context.node_config["partition-id"]`` (set per virtual
node by the simulation engine, or by ``flower-supernode --node-config "partition-id=3"`` in a
deployment); before the first round the server asks every node for it (``message_type="query"``)
and keeps a partition-id -> node-id map. Client state (SCAFFOLD's c_i, ADMM's w_k and lambda_k)
lives in the node's own ``context.state``; the client builds its own algorithm object from the
spec string in the message for every message, so nothing is shared with the server but messages.

``client_model="module"`` makes the client train a real ``nn.Module`` (the digits MLP:
forward, ``backward()``, gradients of its own parameters; :class:`lab.federated.wire.ModuleData`)
instead of the vectorized functional model; the numbers are the same to float rounding.

Participation is decided by the server with the lab's participation model (who is asked to
train), not by Flower's node sampling, so the same seed gives the same participants as the lab
simulator. A straggler's reply is held by the server until its arrival round (the simulation
engine answers at once; the ``base-round`` in the reply is what marks it stale).

Deployment (SuperLink + SuperNodes on localhost): see the README's federated section; the module
attributes :data:`server` and :data:`client` are the apps (``lab.federated.flower:server``,
``lab.federated.flower:client``), configured by the run config (the ``FederatedConfig`` fields as
keys, plus ``client-model`` and ``history-path``).
"""
from __future__ import annotations

import dataclasses
import json
import time
import typing
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from lab.federated.base import Aggregator

STATE_KEY = "lab-client-state"


# ---- configs on the wire ------------------------------------------------------------------------
def config_record_values(cfg: Any, **extra: Any) -> dict[str, Any]:
    """A ``FederatedConfig`` as flat ConfigRecord values (``None`` -> ``""``, tuples -> lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = "" if value is None else (list(value) if isinstance(value, tuple) else value)
    out.update(extra)
    return out


def config_from_values(values: Mapping[str, Any]):
    """The ``FederatedConfig`` of flat values (a ConfigRecord or a Flower run config)."""
    from lab.experiments._base import field_types, parse_value
    from lab.experiments.federated import FederatedConfig

    types = field_types(FederatedConfig)
    kwargs = {}
    for name, annotation in types.items():
        if name not in values:
            continue
        value = values[name]
        if value == "" and type(None) in typing.get_args(annotation):
            kwargs[name] = None
        elif isinstance(value, str) and annotation is not str:
            kwargs[name] = parse_value(value, annotation)
        elif annotation is float or (type(None) in typing.get_args(annotation) and float in typing.get_args(annotation)):
            kwargs[name] = float(value)
        else:
            kwargs[name] = value
    return FederatedConfig(**kwargs)


@lru_cache(maxsize=8)
def _problem(problem: str, num_clients: int, alpha: float, seed: int):
    from lab.experiments.federated import build_problem

    return build_problem(problem, num_clients, alpha, seed)


def layout(problem: Any) -> list[tuple[str, tuple[int, ...]]]:
    """The arrays a model travels as: the module's named parameters, or one flat ``x``."""
    shapes = getattr(problem.loss_fn, "keywords", {}).get("shapes")
    return list(shapes) if shapes else [("x", (problem.dim,))]


def to_arrays(x: torch.Tensor, names: Sequence[tuple[str, tuple[int, ...]]]):
    """A flat vector as an ArrayRecord of named arrays (layer by layer)."""
    from flwr.app import ArrayRecord

    out, start = {}, 0
    for name, shape in names:
        size = int(np.prod(shape)) if shape else 1
        out[name] = x[start:start + size].reshape(shape).detach().cpu().clone()
        start += size
    return ArrayRecord(out)


def from_arrays(record: Any, names: Sequence[tuple[str, tuple[int, ...]]], dtype: torch.dtype) -> torch.Tensor:
    """The flat vector of an ArrayRecord, checked against the expected layout."""
    tensors = record.to_torch_state_dict()
    missing = [n for n, _ in names if n not in tensors]
    if missing:
        raise ValueError(f"model arrays missing from the message: {missing}")
    parts = []
    for name, shape in names:
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"array {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        parts.append(t.reshape(-1))
    return torch.cat(parts).to(dtype)


def _vectors(record: Any | None) -> dict[str, torch.Tensor]:
    return {} if record is None else {k: v.clone() for k, v in record.to_torch_state_dict().items()}


# ---- the client ---------------------------------------------------------------------------------
def handle_train(msg: Any, context: Any) -> Any:
    """A ClientApp's ``train``: one round of local training with the client's own objects."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from lab.experiments.federated import algorithm_spec
    from lab.federated.wire import ModuleData, client_algorithm, client_generator, client_round

    values = dict(msg.content["config"])
    cfg = config_from_values(values)
    problem = _problem(cfg.problem, cfg.num_clients, cfg.alpha, cfg.seed)
    cid = _partition_id(context, problem.num_clients)
    spec = algorithm_spec(cfg)
    algorithm = client_algorithm(spec, problem)  # the client's own object, from the spec string
    module = values.get("client-model", "vector") == "module"
    data = ModuleData.from_problem(problem, cid) if module else problem.client(cid)
    names = layout(problem)
    x = from_arrays(msg.content["model"], names, problem.x0.dtype)
    downlink = _vectors(msg.content.array_records.get("downlink"))
    state_key = f"{STATE_KEY}:{values.get('run-key', spec)}"
    state = _vectors(context.state.array_records.get(state_key))
    round_ = int(values["round"])
    reply = client_round(algorithm, data, cid, x, downlink, state, steps=int(values["local-steps"]),
                         lr=float(values["lr"]), generator=client_generator(cfg.seed, round_, cid))
    if reply.state:
        context.state[state_key] = ArrayRecord({k: v.detach().cpu() for k, v in reply.state.items()})
    content = RecordDict({
        "update": to_arrays(reply.delta, names),
        "metrics": MetricRecord({"partition-id": cid, "num-examples": reply.num_samples, "base-round": round_}),
    })
    if reply.extras:
        content["extras"] = ArrayRecord({k: v.detach().cpu() for k, v in reply.extras.items()})
    return Message(content, reply_to=msg)


def handle_query(msg: Any, context: Any) -> Any:
    """A ClientApp's ``query``: ``"identify"`` (reply with the partition id) or ``"idle"`` (an
    unselected client's local work, ADMM's ``continue_when_idle``)."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from lab.experiments.federated import algorithm_spec
    from lab.federated.wire import client_algorithm, client_generator, client_idle

    values = dict(msg.content["config"])
    action = values.get("action")
    if action == "identify":
        pid = context.node_config.get("partition-id")
        if pid is None:
            raise ValueError("this node has no partition-id in its node config; start it with "
                             "--node-config \"partition-id=<i> num-partitions=<N>\"")
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": int(pid)})}), reply_to=msg)
    if action != "idle":
        raise ValueError(f"query action must be 'identify' or 'idle', got {action!r}")
    cfg = config_from_values(values)
    problem = _problem(cfg.problem, cfg.num_clients, cfg.alpha, cfg.seed)
    cid = _partition_id(context, problem.num_clients)
    spec = algorithm_spec(cfg)
    state_key = f"{STATE_KEY}:{values.get('run-key', spec)}"
    state = _vectors(context.state.array_records.get(state_key))
    if state:
        algorithm = client_algorithm(spec, problem)
        new = client_idle(algorithm, problem.client(cid), cid, state, steps=int(values["local-steps"]),
                          lr=float(values["lr"]), generator=client_generator(cfg.seed, int(values["round"]), cid))
        context.state[state_key] = ArrayRecord({k: v.detach().cpu() for k, v in new.items()})
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": cid})}), reply_to=msg)


def _partition_id(context: Any, num_clients: int) -> int:
    pid = context.node_config.get("partition-id")
    if pid is None:
        raise ValueError("the node config has no partition-id (the lab's client index)")
    pid = int(pid)
    if not 0 <= pid < num_clients:
        raise ValueError(f"partition-id must be in [0, {num_clients}), got {pid}")
    return pid


def client_app():
    """A Flower ``ClientApp`` for every lab aggregator (its configuration arrives in the messages)."""
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(handle_train)
    app.query()(handle_query)
    return app


# ---- the server ---------------------------------------------------------------------------------
class FlowerClients:
    """Local training by Flower clients: plugs into ``simulate(..., local_training=...)``.

    ``train`` sends one ``train`` message per participating client to its node and returns the
    updates in the replies (after handing each client's extra vectors to the server's algorithm);
    ``idle`` sends ``query``/``idle`` messages to unselected clients. The server's algorithm object
    never leaves this process.
    """

    def __init__(self, grid: Any, cfg: Any, *, client_model: str = "vector", run_key: str = "",
                 timeout: float | None = 600.0):
        from lab.checks import check_choice

        self.grid, self.cfg = grid, cfg
        self.client_model = check_choice("client_model", client_model, ("vector", "module"))
        self.run_key = run_key or cfg.algorithm
        self.timeout = timeout
        self.nodes: dict[int, int] | None = None  # partition id -> node id
        self.messages = 0

    def _config(self, round: int, steps: int, lr: float, **extra: Any):
        from flwr.app import ConfigRecord

        return ConfigRecord(config_record_values(self.cfg, round=int(round), **{"local-steps": int(steps)}, lr=float(lr),
                                                 **{"client-model": self.client_model, "run-key": self.run_key},
                                                 **extra))

    def _exchange(self, messages: list) -> list:
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        self.messages += len(messages)
        if len(replies) != len(messages):
            raise RuntimeError(f"{len(messages) - len(replies)} of {len(messages)} Flower clients did not reply "
                               f"within {self.timeout} s")
        for reply in replies:
            if reply.has_error():
                raise RuntimeError(f"a Flower client failed: {reply.error.reason}")
        return replies

    def discover(self, num_clients: int) -> dict[int, int]:
        """Ask every node for its partition id; returns {partition id: node id}."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        node_ids = list(self.grid.get_node_ids())
        msgs = [Message(RecordDict({"config": ConfigRecord({"action": "identify"})}), node, MessageType.QUERY,
                        group_id="identify") for node in node_ids]
        nodes: dict[int, int] = {}
        for reply in self._exchange(msgs):
            pid = int(reply.content["metrics"]["partition-id"])
            if pid in nodes:
                raise ValueError(f"two nodes claim partition-id {pid}")
            nodes[pid] = reply.metadata.src_node_id
        missing = sorted(set(range(num_clients)) - set(nodes))
        if missing:
            raise ValueError(f"no Flower node holds partition-id(s) {missing}: start {num_clients} nodes with "
                             f"partition-id 0..{num_clients - 1}")
        self.nodes = nodes
        return nodes

    def train(self, server: Aggregator, x: torch.Tensor, ids: torch.Tensor, round: int, *, steps: int,
              lr: float, generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        from flwr.app import ArrayRecord, Message, MessageType, RecordDict

        problem = _problem(self.cfg.problem, self.cfg.num_clients, self.cfg.alpha, self.cfg.seed)
        if self.nodes is None:
            self.discover(problem.num_clients)
        names = layout(problem)
        downlink = {k: v.detach().cpu() for k, v in server.downlink_state().items()}
        config = self._config(round, steps, lr)
        msgs = []
        for cid in ids.tolist():
            content = RecordDict({"model": to_arrays(x, names), "config": config})
            if downlink:
                content["downlink"] = ArrayRecord(dict(downlink))
            msgs.append(Message(content, self.nodes[cid], MessageType.TRAIN, group_id=str(round)))
        by_client: dict[int, Any] = {}
        for reply in self._exchange(msgs):
            metrics = reply.content["metrics"]
            by_client[int(metrics["partition-id"])] = reply
        rows, bases = [], []
        for cid in ids.tolist():
            reply = by_client[cid]
            rows.append(from_arrays(reply.content["update"], names, x.dtype).to(x.device))
            extras = {k: v.to(x.device) for k, v in _vectors(reply.content.array_records.get("extras")).items()}
            server.server_receive(cid, extras)
            bases.append(int(reply.content["metrics"]["base-round"]))
        server.local_steps, server.local_lr = steps, lr
        return torch.stack(rows), bases

    def idle(self, server: Aggregator, ids: torch.Tensor, round: int, *, steps: int, lr: float,
             generator: torch.Generator) -> None:
        from flwr.app import Message, MessageType, RecordDict

        config = self._config(round, steps, lr, action="idle")
        msgs = [Message(RecordDict({"config": config}), self.nodes[cid], MessageType.QUERY, group_id=f"idle-{round}")
                for cid in ids.tolist() if self.nodes is not None]
        if msgs:
            self._exchange(msgs)


def run_on_grid(grid: Any, cfg: Any, *, client_model: str = "vector", run_key: str = ""):
    """The ``federated`` experiment's run of ``cfg`` with Flower clients on ``grid``; a History."""
    from lab.experiments.federated import components
    from lab.federated.simulate import simulate

    problem, algorithm, participation, faults = components(cfg)
    clients = FlowerClients(grid, cfg, client_model=client_model, run_key=run_key)
    start = time.perf_counter()
    history = simulate(problem, algorithm, participation, cfg.rounds, cfg.local_steps, cfg.lr, cfg.seed,
                       faults=faults, local_training=clients)
    history.meta.update(algorithm=cfg.algorithm, engine="flower", client_model=client_model,
                        messages=clients.messages, rounds_wall_time=time.perf_counter() - start)
    return history


def server_app(config: Any = None, *, configs: Sequence[Any] = (), client_model: str = "vector",
               results: list | None = None, history_path: str | None = None):
    """A Flower ``ServerApp`` running the ``federated`` experiment's config(s) with Flower clients.

    Args:
        config: a ``FederatedConfig``; None = read it from the run config (deployment).
        configs: several configs run one after another in one Flower run (one engine start-up).
        client_model: ``"vector"`` or ``"module"`` (clients train the digits MLP as an nn.Module).
        results: a list the Histories are appended to (in-process runs: ``run_simulation``).
        history_path: write the Histories as JSON there (a list, one per config).
    """
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        run_config = dict(context.run_config)
        chosen = list(configs) or [config if config is not None else config_from_values(run_config)]
        model = run_config.get("client-model", client_model)
        path = history_path or run_config.get("history-path") or None
        histories = []
        for i, cfg in enumerate(chosen):
            histories.append(run_on_grid(grid, cfg, client_model=model, run_key=f"{i}:{cfg.algorithm}"))
        if results is not None:
            results.extend(histories)
        if path:
            with open(path, "w") as fh:
                json.dump([h.to_dict() for h in histories], fh)

    return app


class RayStartupTimeout(RuntimeError):
    """Ray's node did not start within its fixed limit (a loaded machine), on every attempt."""


def run_flower_simulation(configs: Sequence[Any], *, client_model: str = "vector", num_supernodes: int | None = None,
                          num_cpus: int = 2, attempts: int = 3) -> list:
    """Run ``configs`` on Flower's simulation engine (Ray) with the lab's apps; returns the Histories.

    One ``run_simulation`` call (one Ray start-up) runs every config in turn; all configs need the
    same ``num_clients`` (one virtual SuperNode per client). Ray's node start-up has a fixed 30 s
    limit that a loaded machine can miss; such a failure ("timed out during startup") is retried
    up to ``attempts`` times (then :class:`RayStartupTimeout`), any other error is raised at once.
    """
    import os

    from flwr.simulation import run_simulation

    configs = list(configs)
    sizes = {cfg.num_clients for cfg in configs}
    if len(sizes) != 1:
        raise ValueError(f"configs must share num_clients (one SuperNode per client), got {sorted(sizes)}")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")  # the raylet's 15 s wait for its agent
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    nodes = num_supernodes or sizes.pop()
    for attempt in range(attempts):
        histories: list = []
        try:
            run_simulation(server_app(configs=configs, client_model=client_model, results=histories), client_app(),
                           num_supernodes=nodes,
                           backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": num_cpus}})
        except RuntimeError as exc:
            cause = repr(exc.__cause__) + repr(getattr(exc.__cause__, "__cause__", None))
            if "timed out during startup" not in cause:
                raise
            if attempt + 1 == attempts:
                raise RayStartupTimeout(f"Ray's node did not start in {attempts} attempts (its fixed 30 s limit; "
                                        f"the machine is loaded)") from exc
            continue
        if len(histories) != len(configs):
            raise RuntimeError(f"the Flower ServerApp finished {len(histories)} of {len(configs)} runs")
        return histories
    raise RuntimeError("unreachable")


def _lazy_apps():
    try:
        return server_app(), client_app()
    except ImportError:  # flwr not installed: the module still imports
        return None, None


server, client = _lazy_apps()
"""The apps a deployment loads: ``lab.federated.flower:server`` and ``lab.federated.flower:client``."""

__all__ = ["server_app", "client_app", "FlowerClients", "run_on_grid", "run_flower_simulation", "RayStartupTimeout", "handle_train", "handle_query",
           "config_record_values", "config_from_values", "layout", "to_arrays", "from_arrays", "server", "client"]
