"""Iterative Gaussian graph learning and NOTEARS via topological swaps."""
import pytest
import torch

from lab.registry import get
from lab.solvers.gaussian_graph import gaussian_graph, objective
from lab.solvers.notears_topo import acyclicity, fit_order, linear_sem, notears_topo, score


def chain_samples(n=1000, d=6, seed=0):
    P = 2.0 * torch.eye(d, dtype=torch.float64)
    for i in range(d - 1):
        P[i, i + 1] = P[i + 1, i] = -0.8
    L = torch.linalg.cholesky(torch.linalg.inv(P))
    Z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ L.T
    return Z, (P != 0) & ~torch.eye(d, dtype=torch.bool)


# ---- gaussian_graph ----------------------------------------------------------------------

def test_lambda_zero_inverts_the_covariance_by_hand():
    # Prepare: two variables whose sample covariance is [[2, 1], [1, 2]] (inverse = [[2, -1], [-1, 2]] / 3)
    X = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    X = X @ torch.linalg.cholesky(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)).T
    # Execute
    result = gaussian_graph(X, lam=0.0, transform="none", tol=1e-12, max_iter=2000)
    # Assert
    expected = torch.tensor([[2.0, -1.0], [-1.0, 2.0]], dtype=torch.float64) / 3
    assert torch.allclose(result.precision, expected, atol=1e-6)


def test_large_lambda_gives_the_empty_graph():
    Z, _ = chain_samples(200)
    result = gaussian_graph(Z, lam=5.0, transform="none")
    assert not result.adjacency.any()
    S = torch.cov(Z.T, correction=0)
    assert torch.allclose(torch.diagonal(result.precision), 1 / torch.diagonal(S), rtol=1e-5)


def test_objective_decreases_monotonically():
    Z, _ = chain_samples(300)
    result = gaussian_graph(Z, lam=0.1, transform="none")
    assert all(b <= a + 1e-9 for a, b in zip(result.objective, result.objective[1:]))
    assert result.converged


def test_rank_transform_recovers_the_chain_from_non_gaussian_data():
    Z, truth = chain_samples()
    cubed = Z.pow(3)  # monotone marginal distortion: no longer Gaussian
    assert torch.equal(gaussian_graph(cubed, transform="rank").adjacency, truth)
    # the same criterion on the raw non-Gaussian data gets the graph wrong
    assert not torch.equal(gaussian_graph(cubed, transform="none").adjacency, truth)


def test_gaussian_graph_bad_input():
    with pytest.raises(ValueError, match="lam"):
        gaussian_graph(torch.randn(5, 2), lam=-1.0)
    with pytest.raises(ValueError, match="constant"):
        gaussian_graph(torch.ones(5, 2), transform="none")
    with pytest.raises(ValueError, match="transform"):
        gaussian_graph(torch.randn(5, 2), transform="log")
    assert objective(torch.diag(torch.tensor([1.0, -1.0])), torch.eye(2), 0.1) == float("inf")  # not PD
    with pytest.raises(ValueError, match="2 samples"):
        gaussian_graph(torch.randn(1, 3))


def test_rank_scores_are_standardized_to_a_correlation_matrix():
    # with lambda above every |S_ij| the graph is empty and Theta = diag(1 / S_ii): the identity when
    # S is a correlation matrix, whatever the scale of the data
    Z, _ = chain_samples(200)
    result = gaussian_graph(100.0 * Z, lam=5.0, transform="rank")
    assert torch.allclose(result.precision, torch.eye(6, dtype=torch.float64), atol=1e-10)


# ---- notears_topo --------------------------------------------------------------------------

def true_dag():
    W = torch.zeros(5, 5, dtype=torch.float64)
    W[0, 1], W[1, 2], W[0, 3], W[3, 4], W[2, 4] = 1.5, -1.2, 1.0, 0.8, 1.1
    return W


def test_acyclicity_by_hand():
    assert acyclicity(torch.tensor([[0.0, 1.0], [0.0, 0.0]])) == pytest.approx(0.0)
    # 2-cycle with weights 1: tr(exp([[0, 1], [1, 0]])) - 2 = 2 cosh(1) - 2
    assert acyclicity(torch.tensor([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(2 * 1.5430806348 - 2)


def test_inner_problem_is_least_squares_on_predecessors():
    X = linear_sem(true_dag(), 500, generator=torch.Generator().manual_seed(0))
    C = X.T @ X / 500
    W = fit_order(C, [0, 1, 2, 3, 4])
    beta = torch.linalg.lstsq(X[:, [0, 1, 2, 3]], X[:, 4]).solution
    assert torch.allclose(W[[0, 1, 2, 3], 4], beta, atol=1e-8)
    assert torch.all(W.tril() == 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_the_true_dag_from_the_reversed_order(seed):
    W_true = true_dag()
    X = linear_sem(W_true, 1000, generator=torch.Generator().manual_seed(seed))
    result = notears_topo(X, init_order=[4, 3, 2, 1, 0])
    assert torch.equal(result.W != 0, W_true != 0)
    assert result.h == pytest.approx(0.0, abs=1e-12)
    assert result.swaps > 0 and all(b < a for a, b in zip(result.scores, result.scores[1:]))
    assert torch.allclose(result.W[W_true != 0], W_true[W_true != 0], atol=0.15)
    Xc = X - X.mean(0)
    assert score(Xc, result.W) < score(Xc, fit_order(Xc.T @ Xc / 1000, [4, 3, 2, 1, 0]))


def test_second_tier_candidates_are_tried_when_the_first_tier_is_empty():
    # grad_tol above every |G_ij|: no first-tier candidate, so only the remaining forbidden pairs
    # can move the order; the search still finds the true DAG
    W_true = true_dag()
    X = linear_sem(W_true, 1000, generator=torch.Generator().manual_seed(0))
    result = notears_topo(X, init_order=[4, 3, 2, 1, 0], grad_tol=1e9)
    assert result.swaps > 0 and torch.equal(result.W != 0, W_true != 0)


def test_columns_are_centered():
    X = linear_sem(true_dag(), 300, generator=torch.Generator().manual_seed(1))
    shifted = notears_topo(X + 5.0)
    assert torch.allclose(shifted.W, notears_topo(X).W, atol=1e-10)


def test_notears_topo_bad_input():
    with pytest.raises(ValueError, match="init_order"):
        notears_topo(torch.randn(10, 3), init_order=[0, 0, 1])
    with pytest.raises(ValueError, match="acyclic"):
        linear_sem(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 10)
    with pytest.raises(TypeError, match="X"):
        notears_topo([[1.0, 2.0]])


def test_registered():
    assert get("solver", "notears_topo") is notears_topo
    assert get("solver", "gaussian_graph") is gaussian_graph
