"""Aggregators: hand-checked rounds on tiny arrays, the spec's limiting cases, invariants, bad input."""
import pytest
import torch

from lab.federated import Bernoulli, Uniform, simulate
from lab.federated.fedau import FedAU
from lab.federated.fedavg import FedAvg
from lab.federated.fedstale import FedStale
from lab.federated.fedvarp import FedVARP
from lab.federated.momentum import FedAvgM, ScaffoldM
from lab.federated.scaffold import Scaffold
from lab.registry import available, make

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
X0 = torch.zeros(2, dtype=torch.float64)


def test_fedavg_hand_checked_weightings():
    # Prepare: two updates, n = 1 and 3, of N = 4 clients
    updates, n = {0: T(1.0, 0.0), 2: T(0.0, 2.0)}, {0: 1, 2: 3}
    # Execute / Assert: samples -> (1/4, 3/4); participating -> (1/2, 1/2); all -> (1/4, 1/4)
    assert FedAvg().setup(4, 2).aggregate(X0, updates, n, 0).tolist() == [0.25, 1.5]
    assert FedAvg(weighting="participating").setup(4, 2).aggregate(X0, updates, n, 0).tolist() == [0.5, 1.0]
    assert FedAvg(weighting="all").setup(4, 2).aggregate(X0, updates, n, 0).tolist() == [0.25, 0.5]
    known = FedAvg(weighting="known_prob", probabilities=T(0.5, 1.0, 0.25, 1.0), server_lr=0.5).setup(4, 2)
    # alpha = 1/4: w = (1/4)/0.5 = 0.5 and (1/4)/0.25 = 1; eta_g = 0.5
    assert known.aggregate(X0, updates, n, 0).tolist() == [0.25, 1.0]
    assert known.last_weights == {0: 0.5, 2: 1.0}


def test_fedvarp_hand_checked_two_rounds():
    alg = FedVARP().setup(3, 2)
    # round 0: memory 0, v = mean((1,0), (0,1)) = (0.5, 0.5)
    x1 = alg.aggregate(X0, {0: T(1, 0), 1: T(0, 1)}, {0: 1, 1: 1}, 0)
    assert x1.tolist() == [0.5, 0.5]
    # round 1: ybar = ((1,0) + (0,1) + 0)/3; v = ybar + (3,3) - 0
    x2 = alg.aggregate(x1, {2: T(3, 3)}, {2: 1}, 1)
    torch.testing.assert_close(x2, T(0.5 + 1 / 3 + 3, 0.5 + 1 / 3 + 3))
    assert alg.state_dict()["memory"].tolist() == [[1, 0], [0, 1], [3, 3]]


def test_fedstale_hand_checked():
    # N = 2, alpha = 1/2, known p = (0.5, 1.0), beta = 0.5
    alg = FedStale(beta=0.5, probabilities=T(0.5, 1.0)).setup(2, 2)
    x1 = alg.aggregate(X0, {0: T(2, 0)}, {0: 1}, 0)  # fresh (1/2)/0.5 * (2,0); memory 0
    assert x1.tolist() == [2.0, 0.0]
    # round 1: client 1 only: fresh (1/2)/1 * (0,4) = (0,2);
    # stale = beta * [ (1/2)(2,0) + (1/2)(0,0) - (1/2)/1 * h_1 (=0) ] = 0.5 * (1, 0)
    x2 = alg.aggregate(x1, {1: T(0, 4)}, {1: 1}, 1)
    assert x2.tolist() == [2.5, 2.0]


def test_fedau_weights_follow_recorded_intervals():
    # client 1 joins at rounds 0, 3, 4: intervals 1, 3, 1; at round 4 its weight is the mean of the
    # intervals recorded before it, (1 + 3) / 2 = 2, times alpha_1 = 1/2
    alg = FedAU().setup(2, 2)
    x = X0
    for r, ids in enumerate([(0, 1), (0,), (0,), (1,), (1,)]):
        x = alg.aggregate(x, {i: T(1.0, 1.0) for i in ids}, {i: 1 for i in ids}, r)
    assert alg.last_weights == {1: 0.5 * 2.0}  # alpha_1 * omega_1 = 1/2 * 2
    torch.testing.assert_close(alg.estimator.omega, T(1.0, 5 / 3))  # after round 4: mean(1, 3, 1)


def test_scaffold_control_variate_invariant(ls_small):
    alg = Scaffold()
    h = simulate(ls_small, alg, Bernoulli(torch.full((8,), 0.5)), rounds=6, local_steps=3, lr=0.05, seed=0)
    assert h["accepted"].sum() > 0
    torch.testing.assert_close(alg.c, alg.c_clients.mean(0))


# ---- limiting cases ------------------------------------------------------------------------
def _final(problem, alg, participation, **kw):
    h = simulate(problem, alg, participation, rounds=kw.pop("rounds", 8), local_steps=3, lr=0.05, seed=3, **kw)
    return torch.tensor(h.artifacts["x_final"], dtype=torch.float64)


def test_fedstale_beta0_is_fedavg_with_inverse_p_weights(ls_small):
    p = torch.linspace(0.2, 0.9, 8, dtype=torch.float64)
    a = _final(ls_small, FedStale(beta=0.0, probabilities=p), Bernoulli(p))
    b = _final(ls_small, FedAvg(weighting="known_prob", probabilities=p), Bernoulli(p))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fedstale_beta1_is_fedvarp(ls_small):
    p = torch.full((8,), 3 / 8, dtype=torch.float64)
    a = _final(ls_small, FedStale(beta=1.0, probabilities=p), Uniform(8, 3))
    b = _final(ls_small, FedVARP(), Uniform(8, 3))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_momentum_variants_at_beta1(ls_small):
    p = torch.full((8,), 0.5, dtype=torch.float64)
    # FedAvg-M, beta = 1, gamma = eta K  ==  FedAvg averaging the participants
    torch.testing.assert_close(_final(ls_small, FedAvgM(beta=1.0), Bernoulli(p)),
                               _final(ls_small, FedAvg(weighting="participating"), Bernoulli(p)), rtol=1e-12, atol=1e-12)
    # SCAFFOLD-M, beta = 1, gamma = eta K eta_g  ==  SCAFFOLD option II with eta_g
    torch.testing.assert_close(_final(ls_small, ScaffoldM(beta=1.0, server_lr=0.05 * 3 * 0.7), Bernoulli(p)),
                               _final(ls_small, Scaffold(server_lr=0.7), Bernoulli(p)), rtol=1e-12, atol=1e-12)


def test_fedau_with_full_participation_is_fedavg(ls_small):
    full = torch.ones(8, dtype=torch.float64)
    torch.testing.assert_close(_final(ls_small, FedAU(), Bernoulli(full)),
                               _final(ls_small, FedAvg(weighting="participating"), Bernoulli(full)),
                               rtol=1e-12, atol=1e-12)


# ---- table-driven over every registered aggregator -----------------------------------------
CONVERGING = ["fedavg", "fedavg_m", "scaffold", "scaffold_m", "fedvarp", "fedstale", "fedau", "admm_robust",
              "knowledge_fusion", "async_inversion"]


def test_catalog_names_registered():
    assert sorted(CONVERGING) == available("aggregator")


@pytest.mark.parametrize("name", CONVERGING)
def test_every_aggregator_converges_on_iid_full_participation(name):
    from toy_envs.federated import least_squares

    # one group: every client has the same optimum, so every method should reach x*
    problem = least_squares(num_clients=6, dim=3, samples_per_client=30, heterogeneity=1.0, groups=1, seed=4)
    alg = make("aggregator", name)
    h = simulate(problem, alg, Bernoulli(torch.ones(6, dtype=torch.float64)), rounds=40, local_steps=2, lr=0.2,
                 seed=0, record_clients=False)
    start = problem.distance(problem.x0)
    assert h["distance"][-1] < 0.2 * start
    state = alg.state_dict()
    assert state["num_clients"] == 6 and state["dim"] == 3


def _two_rounds(name, problem):
    """Set up ``name`` on ``problem``, run one real round (clients 0 and 1), return (alg, x after it)."""
    alg = make("aggregator", name).setup(problem.num_clients, problem.dim, problem)
    ids = torch.tensor([0, 1])
    g = torch.Generator().manual_seed(0)
    deltas = alg.local_updates(problem.x0, ids, problem.clients(ids), steps=2, lr=0.1, generator=g)
    n = {i: int(problem.num_samples[i]) for i in (0, 1)}
    x1 = alg.aggregate(problem.x0, {0: deltas[0], 1: deltas[1]}, n, 0)
    return alg, x1


@pytest.mark.parametrize("name", CONVERGING)
def test_empty_round_leaves_the_model_and_server_memory_unchanged(name, ls_small):
    # Prepare: one real round, so momentum buffers and stored updates are non-zero
    alg, x1 = _two_rounds(name, ls_small)
    assert not torch.equal(x1, ls_small.x0)
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in alg.state_dict().items()}
    # Execute: a round in which no update was accepted
    x2 = alg.aggregate(x1, {}, {}, 1)
    # Assert: no step (Flower skips such a round too) and nothing stored changed, except the
    # participation counters that count rounds (FedAU's estimator)
    assert torch.equal(x2, x1)
    assert alg.last_weights == {}
    for key, value in alg.state_dict().items():
        if key in ("run", "omega", "count", "versions"):
            continue
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, before[key]), key


def test_server_momentum_does_not_coast_through_an_empty_round():
    # Prepare: FedAvgM with beta = 0.9 after one round with update (1, 0): v = (-1, 0), x = (1, 0)
    alg = FedAvg(server_momentum=0.9).setup(2, 2)
    x1 = alg.aggregate(X0, {0: T(1.0, 0.0)}, {0: 1}, 0)
    assert x1.tolist() == [1.0, 0.0]
    # Execute: an empty round, then a round with update (0, 1)
    x2 = alg.aggregate(x1, {}, {}, 1)
    x3 = alg.aggregate(x2, {1: T(0.0, 1.0)}, {1: 1}, 2)
    # Assert: the empty round took no step and left v alone: v = 0.9 (-1, 0) + (0, -1) afterwards
    assert x2.tolist() == [1.0, 0.0]
    torch.testing.assert_close(x3, T(1.9, 1.0))


def test_server_momentum_matches_flowers_fedavgm_over_an_empty_round():
    flwr = pytest.importorskip("flwr")  # noqa: F841
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvgM

    x0 = T(0.5, -0.5)
    theirs = FedAvgM(server_learning_rate=1.0, server_momentum=0.9,
                     initial_parameters=ndarrays_to_parameters([x0.numpy()]))
    ours = FedAvg(server_momentum=0.9).setup(2, 2)
    x = x0
    for r, update in enumerate([T(1.0, 0.0), None, T(0.0, 1.0)]):
        results = [] if update is None else [
            (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([(x + update).numpy()]), 1, {}))]
        params, _ = theirs.aggregate_fit(r + 1, results, [])
        x = ours.aggregate(x, {} if update is None else {0: update}, {} if update is None else {0: 1}, r)
        if params is not None:  # Flower returns nothing on an empty round: the model stays
            theirs.initial_parameters = params
        np.testing.assert_allclose(parameters_to_ndarrays(theirs.initial_parameters)[0], x.numpy(), rtol=1e-12)


# ---- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONVERGING)
@pytest.mark.parametrize("bad_id, error", [(-1, ValueError), (8, ValueError), (1.0, TypeError), (True, TypeError)])
def test_every_aggregator_range_checks_client_ids(name, bad_id, error, ls_small):
    # Prepare: a set-up algorithm with state in its client memories
    alg, x1 = _two_rounds(name, ls_small)
    before = {k: v.clone() for k, v in alg.state_dict().items() if isinstance(v, torch.Tensor)}
    # Execute / Assert: the id is refused with an error naming the argument, and no memory moved
    with pytest.raises(error, match="updates|client"):
        alg.aggregate(x1, {bad_id: torch.ones(ls_small.dim, dtype=torch.float64)}, {bad_id: 5}, 1)
    for key, value in before.items():
        assert torch.equal(alg.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["fedavg", "scaffold", "scaffold_m", "fedavg_m", "admm_robust"])
def test_local_updates_range_check_client_ids(name, ls_small):
    alg = make("aggregator", name).setup(ls_small.num_clients, ls_small.dim, ls_small)
    g = torch.Generator().manual_seed(0)
    data = ls_small.clients([0, 1])
    with pytest.raises(ValueError, match=r"client_ids .*\[0, 8\).*-1"):
        alg.local_updates(ls_small.x0, torch.tensor([-1, 0]), data, steps=1, lr=0.1, generator=g)
    with pytest.raises(ValueError, match="client_ids.*repeat"):
        alg.local_updates(ls_small.x0, torch.tensor([1, 1]), data, steps=1, lr=0.1, generator=g)
    with pytest.raises(TypeError, match="client_ids"):
        alg.local_updates(ls_small.x0, torch.tensor([0.0, 1.0]), data, steps=1, lr=0.1, generator=g)
    with pytest.raises(ValueError, match="client_ids has 1 ids but data holds 2"):
        alg.local_updates(ls_small.x0, torch.tensor([0]), data, steps=1, lr=0.1, generator=g)


def test_fedvarp_never_writes_a_negative_id_into_another_clients_memory():
    # the review's case: id -1 used to land in the last client's row (N = 5: client 4)
    alg = FedVARP().setup(5, 2)
    with pytest.raises(ValueError, match=r"\[0, 5\).*-1"):
        alg.aggregate(X0, {-1: T(1.0, 1.0)}, {-1: 1}, 0)
    assert alg.memory.abs().sum() == 0


def test_model_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match=r"x must have shape \(2,\)"):
        FedAvg().setup(3, 2).aggregate(T(0.0, 0.0, 0.0), {0: T(1.0, 1.0, 1.0)}, {0: 1}, 0)


def test_bad_updates_are_refused_naming_the_client():
    alg = FedAvg().setup(3, 2)
    with pytest.raises(ValueError, match=r"updates\[1\].*NaN"):
        alg.aggregate(X0, {1: T(float("nan"), 0.0)}, {1: 1}, 0)
    with pytest.raises(ValueError, match=r"updates\[0\].*shape"):
        alg.aggregate(X0, {0: T(1.0, 2.0, 3.0)}, {0: 1}, 0)
    with pytest.raises(ValueError, match=r"num_samples\[0\]"):
        alg.aggregate(X0, {0: T(1.0, 2.0)}, {}, 0)
    with pytest.raises(TypeError, match="updates"):
        alg.aggregate(X0, [T(1.0, 2.0)], {0: 1}, 0)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="weighting"):
        FedAvg(weighting="median")
    with pytest.raises(ValueError, match="probabilities"):
        FedAvg(weighting="known_prob")
    with pytest.raises(ValueError, match="beta"):
        FedStale(beta=1.5)
    with pytest.raises(ValueError, match="beta"):
        FedAvgM(beta=0.0)
    with pytest.raises(ValueError, match="server_lr"):
        FedAvg(server_lr=-1.0)
    with pytest.raises(ValueError, match="server_momentum"):
        FedAvg(server_momentum=1.0)
    with pytest.raises(ValueError, match="cutoff"):
        FedAU(cutoff=0)
    with pytest.raises(RuntimeError, match="setup"):
        FedAvg().aggregate(X0, {}, {}, 0)
    with pytest.raises(KeyError, match="fedavg"):
        make("aggregator", "fedmedian")


# ---- the choices stated in the module docstrings ---------------------------------------------
def _round(alg, problem, ids, x=None, *, steps=3, lr=0.1):
    """Local updates (full local batches: deterministic) of clients ``ids`` from ``x``, as a dict."""
    x = problem.x0 if x is None else x
    deltas = alg.local_updates(x, torch.tensor(ids), problem.clients(ids), steps=steps, lr=lr,
                               generator=torch.Generator().manual_seed(0))
    return {i: d for i, d in zip(ids, deltas)}


def test_scaffold_option_i_takes_the_full_local_gradient_at_x(ls_small):
    # Prepare: option I proposes c_i^+ = grad F_i(x) on the client's full data, before any local step
    alg = Scaffold(option="I").setup(8, 4, ls_small)
    x = ls_small.x0 + 0.3
    # Execute
    updates = _round(alg, ls_small, [2, 5], x)
    alg.aggregate(x, updates, {2: 1, 5: 1}, 0)
    # Assert: c_i = (1/n_i) X_i^T (X_i x - y_i) for least squares
    A, b = ls_small.clients([2, 5]).normal_equations()
    torch.testing.assert_close(alg.c_clients[[2, 5]], (A @ x) - b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [Scaffold, ScaffoldM])
def test_control_variates_are_committed_only_for_accepted_updates(cls, ls_small):
    # Prepare: clients 0, 1 and 2 train; 1's upload is lost (never reaches aggregate)
    alg = cls().setup(8, 4, ls_small)
    updates = _round(alg, ls_small, [0, 1, 2])
    del updates[1]
    # Execute: unequal sample counts
    alg.aggregate(ls_small.x0, updates, {0: 1, 2: 9}, 0)
    # Assert: c_1 stays 0, c = mean c_i holds, and the server weights are 1/|S| whatever n_i
    assert alg.c_clients[1].abs().sum() == 0 and alg.c_clients[0].abs().sum() > 0
    torch.testing.assert_close(alg.c, alg.c_clients.mean(0))
    assert alg.last_weights == {0: 0.5, 2: 0.5}  # SCAFFOLD-M: gamma / (eta K |S|) with gamma = eta K


def test_fedvarp_ignores_the_sample_counts():
    updates = {0: T(1.0, 0.0), 1: T(0.0, 3.0)}
    a = FedVARP().setup(3, 2).aggregate(X0, updates, {0: 1, 1: 1}, 0)
    b = FedVARP().setup(3, 2).aggregate(X0, updates, {0: 1, 1: 50}, 0)
    assert torch.equal(a, b) and a.tolist() == [0.5, 1.5]


def test_fedstale_beta0_with_estimated_rates_is_fedau(ls_small):
    # FedStale's unknown-p mode uses FedAU's estimator: beta = 0 leaves nothing but FedAU
    p = torch.linspace(0.2, 0.9, 8, dtype=torch.float64)
    torch.testing.assert_close(_final(ls_small, FedStale(beta=0.0), Bernoulli(p), rounds=12),
                               _final(ls_small, FedAU(), Bernoulli(p), rounds=12), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make_alg", [FedAU, lambda: FedStale(beta=0.5)])
def test_an_empty_round_counts_in_the_participation_intervals(make_alg):
    # Prepare: client 0 joins in rounds 0 and 2; round 1 is empty
    alg = make_alg().setup(2, 2)
    x = alg.aggregate(X0, {0: T(1.0, 0.0)}, {0: 1}, 0)
    # Execute
    x = alg.aggregate(x, {}, {}, 1)
    alg.aggregate(x, {0: T(1.0, 0.0)}, {0: 1}, 2)
    # Assert: client 0's second interval is 2 (the empty round counted); client 1 has been idle 3 rounds
    assert alg.estimator.omega.tolist() == [1.5, 1.0] and alg.estimator.run.tolist() == [0, 3]


def test_fedau_counts_a_dropped_upload_as_absent(ls_small):
    from lab.federated import Faults

    # Prepare / Execute: half the uploads are lost on the way
    alg = FedAU()
    h = simulate(ls_small, alg, Bernoulli(torch.full((8,), 0.6, dtype=torch.float64)), rounds=10, local_steps=1,
                 lr=0.05, seed=0, faults=Faults(drop_prob=0.5))
    # Assert: the intervals recorded are those of the accepted updates only (no cutoff)
    accepted = torch.as_tensor(h["weights"] > 0).sum(0)
    assert (accepted < torch.as_tensor(h["participation"]).sum(0)).any()
    assert alg.estimator.count.tolist() == accepted.tolist()


def test_fedau_weights_carry_the_objective_weights():
    from toy_envs.federated import least_squares

    # Prepare: sample-weighted objective, clients of unequal sizes: alpha_i = n_i / sum n
    problem = least_squares(num_clients=4, dim=2, samples_per_client=10, size_skew=1.0, weighting="samples", seed=0)
    assert problem.weights.unique().numel() > 1
    alg = FedAU().setup(4, 2, problem)
    # Execute: a first round (omega = 1 for everyone)
    alg.aggregate(problem.x0, {i: T(1.0, 0.0) for i in range(4)}, {i: 1 for i in range(4)}, 0)
    # Assert: w_i = omega_i alpha_i = alpha_i
    assert alg.last_weights == pytest.approx(dict(enumerate(problem.weights.tolist())), abs=1e-15)


@pytest.mark.parametrize("variance_reduction", [False, True])
def test_momentum_first_round_is_plain_local_sgd(variance_reduction, ls_small):
    from lab.federated import local_sgd

    # g^0 = 0: FedAvg-M's first local steps are SGD with step eta * beta; the VR variant leaves
    # its correction out in the first round (no x^{r-1}), so its steps are plain SGD with eta
    alg = FedAvgM(beta=0.3, variance_reduction=variance_reduction).setup(8, 4, ls_small)
    got = _round(alg, ls_small, [1, 4], steps=4, lr=0.1)
    step = 0.1 if variance_reduction else 0.03
    want = local_sgd(ls_small.clients([1, 4]), ls_small.x0, steps=4, lr=step, generator=torch.Generator()).delta
    torch.testing.assert_close(torch.stack([got[1], got[4]]), want, rtol=1e-12, atol=1e-12)


# ---- admm_robust -------------------------------------------------------------------------------
def test_admm_first_update_is_the_proximal_step_and_the_dual_uses_the_received_model(ls_small):
    from lab.federated.admm import RobustADMM

    # Prepare
    rho = 2.0
    alg = RobustADMM(rho=rho).setup(8, 4, ls_small)
    A, b = ls_small.client(3).normal_equations()
    A, b, eye = A[0], b[0], torch.eye(4, dtype=torch.float64)
    z1, z2 = ls_small.x0 + 0.5, ls_small.x0 - 0.25
    # Execute / Assert: first update (no w yet, lambda = 0): w = (A + rho I)^{-1} (b + rho z1), sent as is
    u1 = z1 + _round(alg, ls_small, [3], z1)[3]
    w1 = torch.linalg.solve(A + rho * eye, b + rho * z1)
    torch.testing.assert_close(u1, w1)
    # second update: lambda <- rho (w1 - z2) first, then w2 = (A + rho I)^{-1} (b + rho z2 - lambda)
    u2 = z2 + _round(alg, ls_small, [3], z2)[3]
    lam = rho * (w1 - z2)
    torch.testing.assert_close(alg.lam[3], lam)
    torch.testing.assert_close(u2, torch.linalg.solve(A + rho * eye, b + rho * z2 - lam))


def test_admm_averages_only_the_clients_it_has_heard_from():
    from lab.federated.admm import RobustADMM

    alg = RobustADMM().setup(3, 2)
    z1 = alg.aggregate(T(1.0, 1.0), {0: T(1.0, 0.0)}, {0: 1}, 0)
    assert z1.tolist() == [2.0, 1.0]  # u_0 alone, not u_0 / 3
    z2 = alg.aggregate(z1, {2: T(0.0, 1.0)}, {2: 1}, 1)
    assert z2.tolist() == [2.0, 1.5]  # mean(u_0 = (2, 1), u_2 = (2, 2))


def test_admm_idle_clients_keep_updating_only_in_the_dual_free_variant(ls_small):
    from lab.federated.admm import RobustADMM

    moved = {}
    for variant, idle in [("dual_free_lab", True), ("dual_free_lab", False), ("standard", True)]:
        # Prepare: clients 0 and 1 train once; then client 1 is not selected
        alg = RobustADMM(variant=variant, continue_when_idle=idle).setup(8, 4, ls_small)
        _round(alg, ls_small, [0, 1], ls_small.x0 + 1.0)
        _round(alg, ls_small, [0, 1], ls_small.x0)
        before = alg.w[1].clone()
        # Execute
        alg.idle_updates(torch.tensor([1]), ls_small.clients([1]), steps=1, lr=0.1,
                         generator=torch.Generator().manual_seed(0))
        moved[variant, idle] = float((alg.w[1] - before).norm())
    # Assert: the dual-free client keeps solving with its last model; otherwise nothing happens
    assert moved["dual_free_lab", True] > 1e-6
    assert moved["dual_free_lab", False] == 0.0 and moved["standard", True] == 0.0


def test_admm_sgd_solver_approaches_the_exact_local_solution(ls_small):
    from lab.federated.admm import RobustADMM

    z = ls_small.x0 + 0.5
    exact = _round(RobustADMM(solver="exact").setup(8, 4, ls_small), ls_small, [2, 6], z)
    sgd = _round(RobustADMM(solver="sgd").setup(8, 4, ls_small), ls_small, [2, 6], z, steps=400, lr=0.1)
    for i in (2, 6):
        torch.testing.assert_close(sgd[i], exact[i], rtol=1e-6, atol=1e-8)


# ---- async_inversion ---------------------------------------------------------------------------
def test_async_discount_and_fallback_by_hand():
    from lab.federated.async_inversion import AsyncInversion

    updates, n = {0: T(2.0, 0.0), 1: T(0.0, 4.0)}, {0: 1, 1: 3}
    # discount: Delta' = (1 + tau)^(-a) Delta, weights n_i / sum n = (1/4, 3/4); tau = (3, 0), a = 0.5
    alg = AsyncInversion(correction="discount", staleness_exponent=0.5).setup(2, 2)
    x = alg.aggregate(X0, updates, n, 5, staleness={0: 3})
    torch.testing.assert_close(x, T(0.25 * 2.0 / 2.0, 0.75 * 4.0))
    # inversion whose base model is older than the stored versions: the discount rule instead
    alg = AsyncInversion(correction="inversion", staleness_exponent=0.5, max_versions=2).setup(2, 2)
    x = alg.aggregate(X0, updates, n, 5, staleness={0: 3})
    torch.testing.assert_close(x, T(0.25 * 2.0 / 2.0, 0.75 * 4.0))
    assert alg.converted == 0
    # fresher than min_staleness: aggregated as it is
    alg = AsyncInversion(correction="discount", min_staleness=4).setup(2, 2)
    x = alg.aggregate(X0, updates, n, 5, staleness={0: 3})
    torch.testing.assert_close(x, T(0.25 * 2.0, 0.75 * 4.0))


# ---- knowledge_fusion --------------------------------------------------------------------------
def test_knowledge_fusion_first_round_by_hand():
    from lab.federated.knowledge_fusion import KnowledgeFusion
    from toy_envs.federated import least_squares

    # Prepare: 5 sources; theta = 0, so p is uniform and the probe loss alone decides
    problem = least_squares(num_clients=5, dim=3, seed=0)
    alg = KnowledgeFusion(top_frac=0.5, temperature=0.2).setup(5, 3, problem)
    g = torch.Generator().manual_seed(0)
    deltas = torch.randn(5, 3, generator=g, dtype=torch.float64)
    deltas[[1, 3]] *= 10.0  # sources 1 and 3 are far off: the probe must leave them out
    losses = alg.probe_loss(problem.x0 + deltas)
    # Execute
    x = alg.aggregate(problem.x0, dict(enumerate(deltas)), {i: 1 for i in range(5)}, 0)
    # Assert: k = ceil(0.5 * 5) = 3 sources with the smallest probe loss, weights softmax(-L / T)
    sel = losses.argsort()[:3]
    assert sorted(sel.tolist()) == [0, 2, 4]
    w = torch.softmax(-losses[sel] / 0.2, dim=0)
    torch.testing.assert_close(x, problem.x0 + (w[:, None] * deltas[sel]).sum(0))
    assert sorted(i for i, v in alg.last_weights.items() if v > 0) == sorted(sel.tolist())
