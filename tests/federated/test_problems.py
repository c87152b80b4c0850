"""toy_envs.federated: partitions, known optima, the closed-form fast path against vmap(grad)."""
import numpy as np
import pytest
import torch

from toy_envs.federated import (
    client_sizes, digits_mlp, dirichlet_partition, iid_partition, least_squares, logistic_regression,
    make_problem,
)


def test_least_squares_optimum_is_stationary(ls_small):
    # Prepare: the global objective sum_i alpha_i F_i
    f = lambda x: (ls_small.weights * ls_small.client_losses(x)).sum()
    # Execute
    grad = torch.func.grad(f)(ls_small.x_star)
    # Assert
    assert grad.norm() < 1e-10
    assert ls_small.global_loss(ls_small.x_star) < ls_small.global_loss(ls_small.x0)


def test_logistic_optimum_is_stationary():
    p = logistic_regression(num_clients=5, dim=3, samples_per_client=20, alpha=0.5, seed=2)
    f = lambda x: (p.weights * p.client_losses(x)).sum()
    assert torch.func.grad(f)(p.x_star).norm() < 1e-9
    assert p.accuracy(p.x_star) > 0.7


@pytest.mark.parametrize("make", [
    lambda: least_squares(num_clients=5, dim=3, size_skew=1.0, seed=3),
    lambda: logistic_regression(num_clients=5, dim=3, alpha=0.3, seed=3),
])
def test_closed_form_gradient_matches_vmap_grad(make):
    # the fast path (closed form) must equal the readable one (vmap of autograd), float64
    p = make()
    data = p.clients(range(p.num_clients))
    x = torch.randn(p.num_clients, p.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fast = data.grads(x, data.X, data.y, data.mask)
    slow = torch.func.vmap(torch.func.grad(p.loss_fn))(x, data.X, data.y, data.mask)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    losses = torch.func.vmap(p.loss_fn, in_dims=(None, 0, 0, 0))(x[0], p.X, p.y, p.mask)
    torch.testing.assert_close(p.client_losses(x[0]), losses, rtol=1e-12, atol=1e-12)


def test_dirichlet_small_alpha_concentrates_labels_large_alpha_spreads_them():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 100)

    def mean_labels_per_client(alpha):
        parts = dirichlet_partition(labels, 10, alpha, rng)
        assert sorted(np.concatenate(parts).tolist()) == list(range(1000))  # a partition
        return np.mean([np.sum(np.bincount(labels[p], minlength=10) >= 5) for p in parts])

    assert mean_labels_per_client(0.05) < 3.0
    assert mean_labels_per_client(100.0) > 9.0


def test_sizes_and_iid_partition():
    rng = np.random.default_rng(0)
    sizes = client_sizes(10, 500, 1.5, rng)
    assert sizes.sum() == 500 and sizes.min() >= 2 and sizes.max() > 3 * sizes.min()
    parts = iid_partition(100, 4, rng)
    assert [len(p) for p in parts] == [25, 25, 25, 25]


def test_unequal_sizes_are_padded_and_masked():
    p = least_squares(num_clients=6, dim=3, samples_per_client=10, size_skew=1.0, seed=0)
    assert p.num_samples.sum() == 60 and len(set(p.num_samples.tolist())) > 1
    assert torch.equal(p.mask.sum(1).long(), p.num_samples)


def test_digits_mlp_problem():
    p = digits_mlp(num_clients=4, alpha=0.5, hidden=(8,), seed=0)
    assert p.dim == 64 * 8 + 8 + 8 * 10 + 10
    assert int(p.num_samples.sum()) == int(p.mask.sum())
    assert 0.0 <= p.accuracy(p.x0) <= 1.0
    assert np.isfinite(p.global_loss(p.x0))


def test_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(np.zeros(10, dtype=int), 2, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="total"):
        client_sizes(10, 5, 0.0, np.random.default_rng(0))
    with pytest.raises(KeyError, match="least_squares"):
        make_problem("nope")
    with pytest.raises(ValueError, match="weighting"):
        least_squares(num_clients=2, weighting="bogus")
