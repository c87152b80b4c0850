"""Top Hessian eigenvalue by power iteration, and the SAM/WSAM behaviour on the sharp/flat toy."""
import numpy as np
import pytest
import torch

from lab.experiments import run
from toy_envs.sharp_flat import FLAT_THRESHOLD, sharp_flat_grad, sharp_flat_loss
from lab.optim.sharpness import hessian_eigen_range, top_hessian_eigenvalue


def test_power_iteration_finds_the_extreme_eigenvalues_of_a_quadratic():
    # Prepare: L = 1/2 x^T A x with eigenvalues -5, 1, 3 (a saddle: the dominant one is negative)
    A = torch.diag(torch.tensor([3.0, -5.0, 1.0], dtype=torch.float64))
    x = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    loss = lambda: 0.5 * x @ A @ x  # noqa: E731
    # Execute
    lo, hi = hessian_eigen_range(loss, [x], iters=300, tol=1e-12)
    top = top_hessian_eigenvalue(loss, [x], iters=300, tol=1e-12)
    # Assert
    assert lo == pytest.approx(-5.0, rel=1e-6) and hi == pytest.approx(3.0, rel=1e-6)
    assert top == pytest.approx(3.0, rel=1e-6)


def test_power_iteration_on_a_network_matches_the_dense_hessian():
    # Prepare: a tiny tanh network, dense Hessian as ground truth
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    w = (0.5 * torch.randn(3, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    v = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(True)

    def loss_of(w_, v_):
        return ((torch.tanh(x @ w_) @ v_ - y) ** 2).mean()

    flat = torch.cat([w.detach().reshape(-1), v.detach()])
    H = torch.autograd.functional.hessian(lambda z: loss_of(z[:12].view(3, 4), z[12:]), flat)
    # Execute
    top = top_hessian_eigenvalue(lambda: loss_of(w, v), [w, v], iters=500, tol=1e-12)
    # Assert
    assert top == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-5)


def test_linear_loss_has_zero_hessian():
    x = torch.ones(3, requires_grad=True)
    assert top_hessian_eigenvalue(lambda: (2 * x).sum(), [x]) == 0.0


@pytest.mark.parametrize("kwargs, error, name", [
    ({"iters": 0}, ValueError, "iters"), ({"iters": 2.5}, TypeError, "iters"), ({"tol": -1.0}, ValueError, "tol")])
def test_bad_power_iteration_arguments(kwargs, error, name):
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(error, match=name):
        top_hessian_eigenvalue(lambda: (x ** 2).sum(), [x], **kwargs)


def test_toy_gradient_matches_autograd_and_minima_curvatures():
    # Prepare
    w = torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)
    # Execute
    (auto,) = torch.autograd.grad(sharp_flat_loss(w), w)
    sharp = torch.tensor([-1.0, 0.0], dtype=torch.float64, requires_grad=True)
    lam_sharp = top_hessian_eigenvalue(lambda: sharp_flat_loss(sharp), [sharp])
    # Assert: analytic gradient; the sharp minimum is far above the flat threshold
    torch.testing.assert_close(sharp_flat_grad(w.detach()), auto)
    assert lam_sharp > 3 * FLAT_THRESHOLD


def _final(optimizer, seeds=(0,), **changes):
    rows = [run("sharp_flat", optimizer=optimizer, seed=s, starts=12, eigen_every=1000, **changes) for s in seeds]
    sharp = np.mean([h["sharp_frac"][-1] for h in rows])
    top = np.mean([h["top_eigenvalue"][-1] for h in rows])
    return sharp, top


@pytest.mark.slow
def test_sam_and_wsam_end_in_the_sharp_minimum_less_often_than_sgd():
    # Prepare / Execute: the same starts, gradient noise and lr for all three
    sgd_sharp, sgd_top = _final("sgd")
    sam_sharp, sam_top = _final("sam")
    wsam_sharp, wsam_top = _final("wsam")
    # Assert: SGD stays in the sharp minimum from a good share of starts; SAM/WSAM leave it,
    # so their end points are flatter (smaller top Hessian eigenvalue)
    assert sgd_sharp >= 0.15
    assert sam_sharp < 0.5 * sgd_sharp and wsam_sharp < 0.5 * sgd_sharp
    assert sam_top < 0.5 * sgd_top and wsam_top < 0.5 * sgd_top


def test_wsam_with_gamma_zero_ends_exactly_where_sgd_ends():
    # Prepare / Execute
    sgd = run("sharp_flat", optimizer="sgd", starts=4, steps=60, eigen_every=1000)
    wsam0 = run("sharp_flat", optimizer="wsam", gamma=0.0, starts=4, steps=60, eigen_every=1000)
    # Assert
    assert np.array_equal(np.array(sgd.artifacts["paths"]), np.array(wsam0.artifacts["paths"]))


def test_digits_experiment_records_loss_accuracy_and_sharpness():
    # Prepare / Execute: a short run with BatchNorm
    h = run("sharpness_digits", optimizer="wsam", steps=20, eval_every=10, eigen_iters=3)
    # Assert
    assert len(h["loss"]) == 20 and np.isfinite(h["loss"]).all()
    assert len(h["accuracy"]) == 3 and h["accuracy"][-1] > h["accuracy"][0]
    assert np.isfinite(h["top_eigenvalue"]).all()
