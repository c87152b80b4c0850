"""lab.federated.flower: ServerApp/ClientApp over Flower messages reproduce the lab simulator.

These tests use an in-process transport (``flower_grid.LocalGrid``: every message serialized to
Flower's protobuf and parsed back) so they run in seconds; ``test_flower_engine.py`` runs the
same apps on Flower's simulation engine (Ray).
"""
import pytest
import torch

flwr = pytest.importorskip("flwr")

from lab.experiments import run  # noqa: E402
from lab.experiments.federated import FederatedConfig  # noqa: E402
from lab.federated import simulate  # noqa: E402
from lab.federated.flower import client_app, config_from_values, config_record_values, run_on_grid  # noqa: E402
from lab.federated.wire import PerClientLoop  # noqa: E402
from lab.registry import available  # noqa: E402

from .flower_grid import LocalGrid  # noqa: E402


def _x(h):
    return torch.tensor(h.artifacts["x_final"], dtype=torch.float64)


@pytest.mark.parametrize("spec", available("aggregator"))
def test_every_aggregator_over_flower_messages_equals_the_simulator(spec):
    # Prepare: 8 clients, Bernoulli participation; async_inversion gets stragglers (stale uploads)
    cfg = FederatedConfig(algorithm=spec, num_clients=8, rounds=5, staleness=1.0 if spec == "async_inversion" else 0.0)
    grid = LocalGrid(client_app(), 8)
    # Execute
    flower = run_on_grid(grid, cfg)
    lab = run("federated", cfg)
    # Assert: same participants, same global model every round (full local batches: deterministic)
    assert (flower["participation"] == lab["participation"]).all()
    torch.testing.assert_close(torch.tensor(flower["loss"]), torch.tensor(lab["loss"]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_x(flower), _x(lab), rtol=1e-12, atol=1e-12)
    assert grid.sent >= 8 + lab["participants"].sum()  # identify + one train message per participant


def test_scaffold_needs_c_on_the_wire():
    # mutating what crosses: a client that never receives c (or keeps no c_i) drifts from SCAFFOLD
    cfg = FederatedConfig(algorithm="scaffold", num_clients=8, rounds=5, local_steps=10)
    lab = run("federated", cfg)

    class NoDownlink(LocalGrid):
        def send_and_receive(self, messages, *, timeout=None):
            for m in messages:
                if "downlink" in m.content.array_records:
                    del m.content["downlink"]
            return super().send_and_receive(messages, timeout=timeout)

    with pytest.raises(KeyError):  # the client's SCAFFOLD refuses to run without c
        run_on_grid(NoDownlink(client_app(), 8), cfg)
    flower = run_on_grid(LocalGrid(client_app(), 8), cfg)
    torch.testing.assert_close(_x(flower), _x(lab), rtol=1e-12, atol=1e-12)


def test_client_state_lives_in_the_node_context():
    cfg = FederatedConfig(algorithm="scaffold", num_clients=8, rounds=4)
    grid = LocalGrid(client_app(), 8)
    run_on_grid(grid, cfg)
    h = run("federated", cfg)
    took_part = (h["participation"].sum(0) > 0).tolist()
    for node, context in grid.contexts.items():
        pid = context.node_config["partition-id"]
        assert (len(context.state.array_records) > 0) == took_part[pid]


def test_async_inversion_gets_staleness_from_the_reply():
    cfg = FederatedConfig(algorithm="async_inversion", num_clients=8, rounds=8, staleness=1.5)
    flower = run_on_grid(LocalGrid(client_app(), 8), cfg)
    assert flower["staleness"].max() > 0
    torch.testing.assert_close(_x(flower), _x(run("federated", cfg)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", ["fedavg", "scaffold", "fedau"])
def test_clients_training_a_real_nn_module_match_the_functional_model(spec):
    # digits MLP: the module clients run forward/backward on nn.Module parameters
    cfg = FederatedConfig(algorithm=spec, problem="digits_mlp", num_clients=8, rounds=3, lr=0.1, alpha=0.5)
    flower = run_on_grid(LocalGrid(client_app(), 8), cfg, client_model="module")
    lab = run("federated", cfg)
    torch.testing.assert_close(_x(flower), _x(lab), rtol=1e-5, atol=1e-6)
    assert flower["accuracy"][-1] == pytest.approx(lab["accuracy"][-1], abs=1e-6)


def test_module_path_really_uses_backward(monkeypatch):
    # break the module gradient: the module run must no longer match
    from lab.federated import wire

    original = wire.ModuleData.grads
    monkeypatch.setattr(wire.ModuleData, "grads", lambda self, *a: 0.5 * original(self, *a))
    cfg = FederatedConfig(algorithm="fedavg", problem="digits_mlp", num_clients=8, rounds=2, lr=0.1, alpha=0.5)
    flower = run_on_grid(LocalGrid(client_app(), 8), cfg, client_model="module")
    assert (_x(flower) - _x(run("federated", cfg))).abs().max() > 1e-3


def test_per_client_loop_equals_vectorized(ls_small):
    # the benchmark's per-client loop runs the same client code as the ClientApp
    from lab.federated import Bernoulli

    p = torch.full((8,), 0.5, dtype=torch.float64)
    for spec in ("fedavg", "scaffold_m", "admm_robust(variant='dual_free_lab')"):
        a = simulate(ls_small, spec, Bernoulli(p), 6, 3, 0.05, 0)
        b = simulate(ls_small, spec, Bernoulli(p), 6, 3, 0.05, 0, local_training=PerClientLoop(ls_small, spec))
        torch.testing.assert_close(_x(a), _x(b), rtol=1e-12, atol=1e-12)


def test_identity_comes_from_the_node_config():
    cfg = FederatedConfig(algorithm="fedavg", num_clients=8, rounds=2)
    grid = LocalGrid(client_app(), 8)
    for context in grid.contexts.values():  # a node without its partition-id
        del context.node_config["partition-id"]
        break
    with pytest.raises((RuntimeError, ValueError), match="partition-id"):
        run_on_grid(grid, cfg)
    with pytest.raises(ValueError, match="no Flower node holds partition-id"):
        run_on_grid(LocalGrid(client_app(), 6), cfg)  # 6 nodes for 8 clients


def test_run_config_round_trip():
    cfg = FederatedConfig(algorithm="fedstale(beta=0.3)", batch_size=None, rounds=7, lr=0.02)
    assert config_from_values(config_record_values(cfg)) == cfg
    assert config_from_values({"algorithm": "scaffold", "rounds": "9", "lr": 1}).rounds == 9


def test_deployment_apps_load():
    # the module attributes a SuperLink/SuperNode deployment loads
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from lab.federated import flower

    assert isinstance(flower.server, ServerApp) and isinstance(flower.client, ClientApp)
