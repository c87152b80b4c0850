"""Regression tests for defects found in review: each fails on the code before its fix."""
import pytest
import torch

from lab.federated import Bernoulli, simulate
from lab.federated.admm import RobustADMM
from lab.federated.knowledge_fusion import KnowledgeFusion
from lab.registry import info
from toy_envs.federated import digits_mlp, least_squares, logistic_regression

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_admm_rebuilds_a_straggler_upload_on_the_model_it_was_computed_against():
    # Prepare: N = 2; round 0 sends z0 = (1, 1), round 2 sends z2 = (5, -3)
    alg = RobustADMM().setup(2, 2)
    z0, z2 = T(1.0, 1.0), T(5.0, -3.0)
    alg.aggregate(z0, {0: T(0.5, 0.0)}, {0: 1}, 0)  # u_0 = z0 + (0.5, 0) = (1.5, 1)
    alg.aggregate(T(1.5, 1.0), {}, {}, 1)
    # Execute: client 1's upload Delta = u_1 - z0 = (1, 2) computed in round 0 arrives in round 2
    z3 = alg.aggregate(z2, {1: T(1.0, 2.0)}, {1: 1}, 2, staleness={1: 2})
    # Assert: u_1 = z0 + Delta = (2, 3) (not z2 + Delta = (6, -1)); z = mean(u_0, u_1)
    torch.testing.assert_close(alg.u[1], T(2.0, 3.0))
    torch.testing.assert_close(z3, T(1.75, 2.0))


def test_admm_refuses_an_upload_older_than_the_models_it_keeps():
    alg = RobustADMM(max_staleness=1).setup(2, 2)
    for r in range(3):
        alg.aggregate(T(0.0, 0.0), {}, {}, r)
    with pytest.raises(ValueError, match="client 0 is 2 rounds stale.*max_staleness=1"):
        alg.aggregate(T(0.0, 0.0), {0: T(1.0, 1.0)}, {0: 1}, 3, staleness={0: 2})


def test_admm_with_stragglers_reaches_the_optimum():
    # late uploads rebuilt on the right model keep ADMM exact; on the current model they do not
    from lab.federated import Faults, Stragglers

    problem = least_squares(num_clients=6, dim=4, samples_per_client=20, heterogeneity=1.0, seed=0)
    part = Stragglers(torch.full((6,), 0.7, dtype=torch.float64), slowness=torch.tensor([0.0] * 3 + [1.5] * 3))
    h = simulate(problem, RobustADMM(variant="dual_free_lab"), part, 150, 1, 0.1, 0, record_clients=False,
                 faults=Faults(deadline=6))
    assert h["staleness"].max() > 0  # stale uploads were aggregated
    assert h["distance"][-1] < 1e-3


def test_admm_default_is_the_specified_update_and_the_lab_variant_is_labelled():
    assert RobustADMM().variant == "standard"
    assert RobustADMM(variant="dual_free").variant == "dual_free_lab"  # old name kept as an alias
    summary = info("aggregator", "admm_robust").summary
    assert "dual_free_lab" in summary and "reconstruction" in summary
    with pytest.raises(ValueError, match="variant"):
        RobustADMM(variant="paper_box")


@pytest.mark.parametrize("make", [lambda: least_squares(num_clients=4, seed=0),
                                  lambda: logistic_regression(num_clients=4, seed=0),
                                  lambda: digits_mlp(num_clients=4, hidden=(4,), seed=0)])
def test_problems_have_a_validation_split_disjoint_from_test(make):
    p = make()
    (Xv, yv), (Xt, yt) = p.validation, p.test
    assert Xv.shape[1:] == Xt.shape[1:] and len(yv) > 0
    rows_t = {tuple(r) for r in Xt.tolist()}
    assert not any(tuple(r) in rows_t for r in Xv.tolist())


def test_knowledge_fusion_scores_sources_on_validation_not_test():
    # Prepare: clients 0-2 have flipped targets; the *test* split is poisoned the same way, so a
    # server that scores its sources on the test split trusts the corrupted clients
    problem = least_squares(num_clients=10, dim=10, heterogeneity=0.5, groups=1, seed=0)
    problem.y[:3] = -problem.y[:3]
    Xt, yt = problem.test
    problem.test = (Xt, -yt)
    full = torch.ones(10, dtype=torch.float64)
    # Execute
    alg = KnowledgeFusion()
    h = simulate(problem, alg, Bernoulli(full), 60, 5, 0.05, 0, record_clients=False)
    # Assert: the clean clients carry the aggregate and the clean optimum is reached
    assert sum(h.artifacts["effective_weight"][:3]) < 0.05
    assert h["distance"][-1] < 0.2 * problem.distance(problem.x0)


def test_knowledge_fusion_needs_a_validation_split():
    problem = least_squares(num_clients=4, seed=0)
    problem.validation = None
    with pytest.raises(ValueError, match="validation"):
        KnowledgeFusion().setup(4, problem.dim, problem)
