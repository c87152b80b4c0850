"""lab.federated.flower: a lab algorithm driven through Flower's own types equals the lab simulator."""
import numpy as np
import pytest
import torch

from lab.federated import Bernoulli, simulate
from lab.federated.fedau import FedAU
from lab.federated.fedavg import FedAvg
from lab.federated.fedstale import FedStale
from lab.federated.flower import make_client, make_strategy

flwr = pytest.importorskip("flwr")
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402


def fit_res(model: torch.Tensor, n: int, cid: int) -> FitRes:
    return FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters([model.numpy()]), n, {"client_id": cid})


def _replay(strategy, lab_alg, x0, rounds, problem, seed=0):
    """Drive Flower's aggregate_fit and the lab aggregate with the same client results."""
    g = torch.Generator().manual_seed(seed)
    x = x0.clone()
    for r in range(rounds):
        ids = [i for i in range(problem.num_clients) if torch.rand(1, generator=g) < 0.6]
        results = []
        updates, n = {}, {}
        for i in ids:
            delta = 0.1 * torch.randn(problem.dim, generator=g, dtype=torch.float64)
            results.append((None, fit_res(x + delta, int(problem.num_samples[i]), i)))
            updates[i], n[i] = delta, int(problem.num_samples[i])
        params, metrics = strategy.aggregate_fit(r + 1, results, [])
        x = lab_alg.aggregate(x, updates, n, r)
        flower_x = torch.from_numpy(parameters_to_ndarrays(params)[0])
        torch.testing.assert_close(flower_x, x, rtol=1e-12, atol=1e-12)
        assert metrics["accepted"] == len(ids)
    return x


@pytest.mark.parametrize("make", [lambda: FedAvg(), lambda: FedAU(), lambda: FedStale(beta=0.5)])
def test_strategy_aggregate_fit_equals_lab_aggregate(ls_small, make):
    strategy = make_strategy(make(), ls_small.x0, ls_small.num_clients, problem=ls_small)
    lab_alg = make().setup(ls_small.num_clients, ls_small.dim, ls_small)
    _replay(strategy, lab_alg, ls_small.x0, 6, ls_small)


def test_fedavg_strategy_equals_flowers_own_fedavg(ls_small):
    # Flower's built-in FedAvg (num_examples-weighted) on the same FitRes objects
    from flwr.server.strategy import FedAvg as FlowerFedAvg

    ours = make_strategy(FedAvg(), ls_small.x0, ls_small.num_clients)
    g = torch.Generator().manual_seed(1)
    results = [(None, fit_res(torch.randn(4, generator=g, dtype=torch.float64), n, i))
               for i, n in enumerate([3, 5, 11])]
    theirs, _ = FlowerFedAvg().aggregate_fit(1, results, [])
    mine, _ = ours.aggregate_fit(1, results, [])
    np.testing.assert_allclose(parameters_to_ndarrays(mine)[0], parameters_to_ndarrays(theirs)[0], rtol=1e-12)


def test_flower_client_and_strategy_reproduce_the_simulator(ls_small):
    # full participation, full-batch local GD: the Flower round trip equals simulate() exactly
    rounds, steps, lr = 3, 2, 0.1
    h = simulate(ls_small, FedAU(), Bernoulli(torch.ones(8, dtype=torch.float64)), rounds, steps, lr, 0)
    alg = FedAU()
    strategy = make_strategy(alg, ls_small.x0, 8, problem=ls_small)
    clients = [make_client(alg, ls_small, i, local_steps=steps, lr=lr) for i in range(8)]
    params = strategy.initialize_parameters(None)
    for r in range(rounds):
        arrays = parameters_to_ndarrays(params)
        results = []
        for i, client in enumerate(clients):
            new, n, metrics = client.fit(arrays, {"local_steps": steps, "lr": lr})
            results.append((None, FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(new), n, metrics)))
        params, _ = strategy.aggregate_fit(r + 1, results, [])
    final = parameters_to_ndarrays(params)[0]
    np.testing.assert_allclose(final, np.array(h.artifacts["x_final"]), rtol=1e-12, atol=1e-12)
    loss, metrics = strategy.evaluate(rounds, params)
    assert abs(loss - h["loss"][-1]) < 1e-12 and "distance" in metrics


def test_non_finite_results_are_refused(ls_small):
    strategy = make_strategy(FedAvg(), ls_small.x0, 8)
    bad = torch.full((4,), float("nan"), dtype=torch.float64)
    params, metrics = strategy.aggregate_fit(1, [(None, fit_res(bad, 5, 0))], ["timeout"])
    assert metrics == {"accepted": 0, "dropped": 2}
    assert np.isfinite(parameters_to_ndarrays(params)[0]).all()
    assert {d["client"] for d in strategy.dropped} == {None, 0}


def test_server_momentum_equals_flowers_fedavgm(ls_small):
    # FedAvg with server momentum vs Flower's FedAvgM on the same FitRes objects, three rounds
    from flwr.server.strategy import FedAvgM

    x0 = torch.zeros(4, dtype=torch.float64)
    theirs = FedAvgM(server_learning_rate=0.7, server_momentum=0.9,
                     initial_parameters=ndarrays_to_parameters([x0.numpy()]))
    ours = make_strategy(FedAvg(server_lr=0.7, server_momentum=0.9), x0, 8)
    g = torch.Generator().manual_seed(2)
    x = x0
    for r in range(1, 4):
        results = [(None, fit_res(x + torch.randn(4, generator=g, dtype=torch.float64), n, i))
                   for i, n in enumerate([2, 7, 4])]
        p_theirs, _ = theirs.aggregate_fit(r, results, [])
        p_ours, _ = ours.aggregate_fit(r, results, [])
        np.testing.assert_allclose(parameters_to_ndarrays(p_ours)[0], parameters_to_ndarrays(p_theirs)[0],
                                   rtol=1e-12, atol=1e-12)
        x = torch.from_numpy(parameters_to_ndarrays(p_ours)[0])


def test_flower_server_loop_reproduces_the_simulator(ls_small):
    # Flower's own Server (configure_fit, thread-pool fit, aggregate_fit, evaluate) with the lab
    # strategy and lab clients: the same final model as simulate() with full participation
    from lab.federated.flower import run_flower

    rounds, steps, lr = 3, 2, 0.1
    h = simulate(ls_small, FedAU(), Bernoulli(torch.ones(8, dtype=torch.float64)), rounds, steps, lr, 0)
    alg = FedAU()
    strategy = make_strategy(alg, ls_small.x0, 8, problem=ls_small, local_steps=steps, lr=lr)
    clients = [make_client(alg, ls_small, i, local_steps=steps, lr=lr) for i in range(8)]
    history, final = run_flower(strategy, clients, rounds)
    assert strategy.dropped == []
    np.testing.assert_allclose(final, np.array(h.artifacts["x_final"]), rtol=1e-12, atol=1e-12)
    losses = [loss for _, loss in history.losses_centralized]
    np.testing.assert_allclose(losses, h["loss"], rtol=1e-12)
