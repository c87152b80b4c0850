"""IPS: the spec's worked 2x2 example, closed forms of decomposable models, monotone likelihood."""
import pytest
import torch

from lab.solvers.ips import fit_table, ips, poisson_nll, table_design


def test_worked_example_one_cycle():
    # Prepare: y = [[10, 20], [30, 40]], independence model, mu0 = 1
    table = torch.tensor([[10.0, 20.0], [30.0, 40.0]], dtype=torch.float64)
    # Execute: one sweep (row pass, then column pass)
    fitted, result = fit_table(table, ((0,), (1,)), max_sweeps=1)
    # Assert: rows -> [[15, 15], [35, 35]]; columns -> [[12, 18], [28, 42]] = r_i c_j / n
    assert torch.allclose(fitted, torch.tensor([[12.0, 18.0], [28.0, 42.0]], dtype=torch.float64))


def test_conditional_independence_closed_form_2x2x2():
    table = torch.tensor([[[5.0, 9.0], [2.0, 7.0]], [[4.0, 1.0], [8.0, 3.0]]], dtype=torch.float64)
    fitted, result = fit_table(table, ((0, 1), (1, 2)))
    # MLE of X0 _||_ X2 | X1: n_ij+ n_+jk / n_+j+
    closed = table.sum(2, keepdim=True) * table.sum(0, keepdim=True) / table.sum((0, 2), keepdim=True)
    assert torch.allclose(fitted, closed, atol=1e-10)
    assert result.converged


def test_no_three_way_model_matches_margins_and_likelihood_is_monotone():
    g = torch.Generator().manual_seed(0)
    table = torch.randint(1, 30, (2, 3, 2), generator=g).to(torch.float64)
    fitted, result = fit_table(table, ((0, 1), (0, 2), (1, 2)), max_sweeps=200)
    # fixed point X^T mu = X^T y: all two-way margins matched (no closed form for this model)
    for axis in range(3):
        assert torch.allclose(fitted.sum(axis), table.sum(axis), atol=1e-6)
    assert all(b <= a + 1e-9 for a, b in zip(result.nll, result.nll[1:]))
    assert result.nll[-1] < result.nll[0]


def test_mm_step_with_nonbinary_features_is_monotone_and_reaches_the_mle():
    g = torch.Generator().manual_seed(1)
    X = torch.rand(12, 3, generator=g, dtype=torch.float64) * 2  # nonnegative, not binary
    beta_true = torch.tensor([0.5, 1.0, -0.3], dtype=torch.float64)
    y = torch.poisson((X @ beta_true).exp(), generator=g)
    result = ips(y, X, max_sweeps=3000, tol=1e-8)
    assert all(b <= a + 1e-9 for a, b in zip(result.nll, result.nll[1:]))
    # score X^T (y - mu) = 0 at the MLE
    assert (X.T @ (y - result.mu)).abs().max() < 1e-5
    assert torch.allclose(result.mu, (X @ result.beta).exp())


def test_random_order_same_fit():
    table = torch.tensor([[3.0, 8.0, 1.0], [6.0, 2.0, 9.0]], dtype=torch.float64)
    X = table_design((2, 3), ((0,), (1,)))
    a = ips(table.reshape(-1), X, tol=1e-12, max_sweeps=50)
    b = ips(table.reshape(-1), X, order="random", tol=1e-12, max_sweeps=50, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a.mu, b.mu, atol=1e-8)


def test_start_and_offset():
    # beta = 0 at the start: nll[0] is the likelihood of mu = exp(offset); the fit is mu = exp(offset + X beta)
    table = torch.tensor([[3.0, 8.0], [6.0, 2.0]], dtype=torch.float64)
    X = table_design((2, 2), ((0,), (1,)))
    offset = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    result = ips(table.reshape(-1), X, offset=offset, tol=1e-12, max_sweeps=200)
    assert result.nll[0] == pytest.approx(poisson_nll(table.reshape(-1), offset.exp()))
    assert torch.allclose(result.mu, (offset + X @ result.beta).exp())
    assert torch.allclose(X.T @ result.mu, X.T @ table.reshape(-1), atol=1e-8)  # margins matched


def test_registered():
    from lab.registry import get
    assert get("solver", "ips") is ips


def test_zero_margin_and_bad_input():
    X = table_design((2, 2), ((0,), (1,)))
    with pytest.raises(ValueError, match="margin"):
        ips(torch.tensor([0.0, 0.0, 3.0, 4.0]), X)
    with pytest.raises(ValueError, match="y"):
        ips(torch.tensor([-1.0, 2.0, 3.0, 4.0]), X)
    with pytest.raises(ValueError, match="X"):
        ips(torch.ones(4), -X)
    with pytest.raises(ValueError, match="rows"):
        ips(torch.ones(3), X)
    with pytest.raises(TypeError, match="y"):
        ips([1.0, 2.0], X)
    with pytest.raises(ValueError, match="order"):
        ips(torch.ones(4), X, order="zigzag")
    with pytest.raises(ValueError, match="feature 4 has a zero data margin"):  # an all-zero column
        ips(torch.ones(4), torch.cat([X, torch.zeros(4, 1, dtype=torch.float64)], dim=1))


def test_poisson_nll_zero_counts_finite():
    assert poisson_nll(torch.zeros(2), torch.ones(2)) == 2.0
