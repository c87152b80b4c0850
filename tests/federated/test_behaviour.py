"""The papers' claims on small toys (least squares with a known optimum)."""
import pytest
import torch

from lab.federated import Bernoulli, Faults, heterogeneous_rates, local_sgd, simulate
from lab.federated.admm import RobustADMM
from lab.federated.async_inversion import AsyncInversion
from lab.federated.fedstale import FedStale
from lab.federated.knowledge_fusion import KnowledgeFusion
from toy_envs.federated import least_squares, logistic_regression


def test_fedau_removes_most_of_fedavg_participation_bias():
    # Prepare: participation correlated with the clients' optima; one local step, so the only
    # bias is the participation one
    problem = least_squares(num_clients=16, dim=4, samples_per_client=15, heterogeneity=1.0, groups=4, seed=0)
    p = heterogeneous_rates(problem.label_dist, 0.3, 1.0, p_min=0.05, generator=torch.Generator().manual_seed(0))
    run = lambda alg: simulate(problem, alg, Bernoulli(p), rounds=300, local_steps=1, lr=0.1, seed=0,  # noqa: E731
                               record_clients=False)
    # Execute
    fedavg, fedau = run("fedavg(weighting='participating')"), run("fedau")
    # Assert: FedAvg sits near argmin sum_i p_i F_i; FedAU near x* = argmin (1/N) sum_i F_i
    A, b = problem.clients(range(16)).normal_equations()
    x_p = torch.linalg.solve((p[:, None, None] * A).sum(0), (p[:, None] * b).sum(0))
    x_fedavg = torch.tensor(fedavg.artifacts["x_final"], dtype=torch.float64)
    assert (x_fedavg - x_p).norm() < 0.5 * (x_fedavg - problem.x_star).norm()
    bias_fedavg, bias_fedau = fedavg["distance"][-100:].mean(), fedau["distance"][-100:].mean()
    assert bias_fedau < 0.4 * bias_fedavg


def test_scaffold_and_momentum_shrink_client_drift():
    # non-IID optima, full participation, K = 20 local steps: FedAvg stalls at a drifted point
    problem = least_squares(num_clients=8, dim=5, samples_per_client=20, heterogeneity=2.0, groups=4, seed=0)
    full = torch.ones(8, dtype=torch.float64)
    run = lambda alg: simulate(problem, alg, Bernoulli(full), rounds=60, local_steps=20, lr=0.05, seed=0,  # noqa: E731
                               record_clients=False)
    fedavg, scaffold, fedavg_m = run("fedavg"), run("scaffold"), run("fedavg_m(beta=0.1)")
    assert scaffold["distance"][-1] < 1e-6 < 0.1 < fedavg["distance"][-1]
    assert fedavg_m["distance"][-1] < 0.3 * fedavg["distance"][-1]
    assert scaffold["drift"][-1] < 1e-6 and fedavg_m["drift"][-1] < 0.3 * fedavg["drift"][-1]


@pytest.mark.slow
def test_fedstale_best_beta_moves_with_data_vs_participation_heterogeneity():
    # Prepare: (A) non-IID data, even participation; (B) near-IID data, half the clients rare
    N, betas = 12, (0.0, 0.5, 1.0)
    even = torch.full((N,), 0.2, dtype=torch.float64)
    uneven = torch.tensor([0.9] * 6 + [0.03] * 6, dtype=torch.float64)

    def errors(heterogeneity, p):
        problem = least_squares(num_clients=N, dim=5, samples_per_client=20, heterogeneity=heterogeneity,
                                groups=4, noise=0.5, seed=0)
        out = []
        for beta in betas:
            runs = [simulate(problem, FedStale(beta=beta, probabilities=p), Bernoulli(p), rounds=150, local_steps=5,
                             lr=0.05, seed=seed, record_clients=False) for seed in (0, 1)]
            out.append(sum(float((h["distance"] ** 2).mean()) for h in runs) / len(runs))
        return out

    # Execute
    err_a, err_b = errors(2.0, even), errors(0.05, uneven)
    # Assert: stale updates help most in A (best beta = 1), hurt in B (best beta < 1, beta = 1 worst than 0)
    assert betas[err_a.index(min(err_a))] == 1.0
    assert betas[err_b.index(min(err_b))] < 1.0 and err_b[2] > err_b[0]


def test_dual_free_admm_holds_a_lower_error_floor_under_link_noise():
    problem = least_squares(num_clients=10, dim=10, samples_per_client=30, heterogeneity=1.0, seed=0)
    full = torch.ones(10, dtype=torch.float64)
    msd = {}
    for variant in ("standard", "dual_free_lab"):
        clean = simulate(problem, RobustADMM(variant=variant), Bernoulli(full), 60, 1, 0.1, 0, record_clients=False)
        assert clean["distance"][-1] < 1e-5  # noiseless: both reach w*
        noisy = simulate(problem, RobustADMM(variant=variant), Bernoulli(full), 200, 1, 0.1, 0, record_clients=False,
                         faults=Faults(uplink_noise=0.05, downlink_noise=0.05))
        msd[variant] = float((noisy["distance"][-100:] ** 2).mean())
    assert msd["dual_free_lab"] < 0.3 * msd["standard"]


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: least_squares(num_clients=3, dim=4, heterogeneity=2.0, seed=0),
                                  lambda: logistic_regression(num_clients=3, dim=4, alpha=0.3, seed=0)])
def test_inversion_turns_a_stale_update_into_a_fresher_one(make):
    # Prepare: the server has seen four updates of client 0 (from other models); a fifth arrives
    # 3 rounds stale, computed at b, while the server is at x_t
    problem, g = make(), torch.Generator().manual_seed(0)
    K, lr = 5, 0.1
    alg = AsyncInversion(inversion_steps=150, inversion_lr=0.05, memory=4).setup(3, problem.dim, problem)
    alg.local_steps, alg.local_lr = K, lr
    data = problem.client(0)
    point = lambda: problem.x_star + torch.randn(problem.dim, generator=g, dtype=torch.float64)  # noqa: E731
    update = lambda x: local_sgd(data, x, steps=K, lr=lr, generator=g).delta[0]  # noqa: E731
    for r in range(4):
        base = point()
        alg.aggregate(base, {0: update(base)}, {0: 10}, r)
    b, x_t = point(), point()
    alg.versions[7] = b
    # Execute
    converted = alg.aggregate(x_t, {0: update(b)}, {0: 10}, 10, staleness={0: 3}) - x_t
    # Assert: closer to the update the client would send from x_t than the stale one is
    fresh = update(x_t)
    assert alg.converted == 1
    assert (converted - fresh).norm() < 0.6 * (update(b) - fresh).norm()


def test_knowledge_fusion_shuts_out_corrupted_sources_and_feedback_spreads_selection():
    # Prepare: 10 clients with one optimum; clients 0-2 have flipped targets
    problem = least_squares(num_clients=10, dim=10, heterogeneity=0.5, groups=1, seed=0)
    problem.y[:3] = -problem.y[:3]
    full = torch.ones(10, dtype=torch.float64)
    run = lambda alg: simulate(problem, alg, Bernoulli(full), 100, 5, 0.05, 0, record_clients=False)  # noqa: E731
    # Execute
    fedavg = run("fedavg")
    greedy, balanced = KnowledgeFusion(feedback=0.0), KnowledgeFusion(feedback=0.5)
    run(greedy)
    fused = run(balanced)
    # Assert: the corrupted clients get (almost) no weight; the clean optimum is reached
    assert fused["distance"][-1] < 0.2 * fedavg["distance"][-1]
    assert sum(fused.artifacts["effective_weight"][:3]) < 0.05
    # the feedback loss keeps the selector from collapsing onto a subset of the good clients
    spread = lambda alg: alg.selections[3:].float().std() / alg.selections[3:].float().mean()  # noqa: E731
    assert spread(balanced) < 0.5 * spread(greedy)
