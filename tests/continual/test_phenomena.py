"""Generalisation phenomena: double descent, opposing signals, high-dimensional dynamics; the
task generators; the figures."""
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from lab.experiments import run
from lab.experiments.phenomena import LargeBatchConfig, compare_large_batch
from lab.viz import phenomena as viz
from toy_envs import tasks


def test_double_descent_peak_is_at_the_interpolation_threshold_and_budgeted_gd_misses_it():
    h = run("double_descent")
    p, test, test_gd, train_gd = h["p"], h["test_mse"], h["test_mse_gd"], h["train_mse_gd"]
    assert p[test.argmax()] == pytest.approx(100, rel=0.15)       # peak near p = n
    assert test.max() > 3 * test[-1] and test.max() > 3 * test[0]
    at_n = int(np.argmin(np.abs(p - 100)))
    assert test_gd[at_n] < test[at_n] / 3                           # no peak for budgeted GD
    assert train_gd[at_n] > 0.05                                    # because GD did not interpolate
    # ridge (regularization) flattens the peak, more GD steps bring it back
    assert run("double_descent", ridge=1e-1)["test_mse"].max() < test.max() / 3
    more = run("double_descent", widths=(100,), gd_steps=20000)
    assert more["test_mse_gd"][0] > 2 * test_gd[at_n]


@pytest.mark.slow
def test_opposing_signals_anti_phase_at_large_lr():
    h = run("opposing_signals")
    da, db = np.diff(h["loss_a"])[50:], np.diff(h["loss_b"])[50:]
    assert np.corrcoef(da, db)[0, 1] < -0.5                          # A and B in anti-phase
    # edge of stability: the sharpness climbs past 2/lr, then hovers at it (measured 4.0-4.4 for 2/lr = 4)
    for seed in range(3):
        sharp = run("opposing_signals", seed=seed)["sharpness"] if seed else h["sharpness"]
        assert sharp[0] < 0.5 * h.artifacts["two_over_lr"] < h.artifacts["two_over_lr"] < sharp.max()
        assert sharp[-5:].mean() == pytest.approx(h.artifacts["two_over_lr"], rel=0.15)
    small = run("opposing_signals", lr=0.02, steps=100)
    assert np.abs(np.diff(small["loss_a"])[50:]).mean() < 0.1 * np.abs(da).mean()
    assert small["sharpness"].max() < 0.1 * small.artifacts["two_over_lr"]   # far from its own 2/lr = 100
    clean = run("opposing_signals", with_outliers=False, steps=120)
    assert "loss_a" not in clean
    assert np.abs(np.diff(clean["loss"])[50:]).mean() < 0.5 * np.abs(np.diff(h["loss"])[50:]).mean()


def test_highdim_overtraining_peaks_at_alpha_one():
    gaps = {}
    for alpha in (1.0, 4.0):
        a = run("highdim_dynamics", alpha=alpha, steps=1000).artifacts
        gaps[alpha] = a["final_test_error"] - a["best_test_error"]
        assert a["best_test_error"] >= 0.25                          # noise floor sigma^2
    assert gaps[1.0] > 1.0 and gaps[4.0] < 0.1
    # zero init, one GD step from w = 0: test error = ||beta||^2 + sigma^2 at step 0
    h = run("highdim_dynamics", steps=1, log_every=1)
    assert h["test_error"][0] == pytest.approx(1.0 + 0.25)


@pytest.mark.parametrize("name,field,value,exc", [
    ("double_descent", "ridge", -1.0, ValueError), ("double_descent", "widths", (), ValueError),
    ("opposing_signals", "lr", 0.0, ValueError), ("highdim_dynamics", "alpha", -1.0, ValueError),
    ("large_batch_gap", "batch_size", 1, ValueError), ("useful_simplicity", "epochs", 0, ValueError),
    ("cpt_digits", "label_noise", 2.0, ValueError), ("ibcl_tradeoffs", "n_tasks", 1, ValueError),
])
def test_experiments_reject_bad_config(name, field, value, exc):
    with pytest.raises(exc, match=field):
        run(name, **{field: value})


def test_task_generators():
    split = tasks.split_digits()
    assert set(split[0][1].tolist()) == {0, 1, 2, 3, 4} and set(split[1][3].tolist()) == {5, 6, 7, 8, 9}
    perm = tasks.permuted_digits(2)
    assert torch.equal(perm[0][1], perm[1][1])
    assert torch.allclose(perm[0][0].sort(dim=1).values, perm[1][0].sort(dim=1).values)
    x, y, simple = tasks.simple_and_complex(2000, seed=1)
    s = 2 * y - 1
    assert (x[simple, 0] * s[simple] > 1.0).float().mean() > 0.99          # simple feature: large margin
    assert abs(simple.float().mean() - 0.7) < 0.05
    x, y, group = tasks.opposing_signals(200)
    assert (y[group == 1] == 1).all() and (y[group == 2] == 0).all() and (x[group > 0, -1] == 10).all()
    x, y, beta = tasks.linear_teacher(50, 5, noise=0.0)
    torch.testing.assert_close(y, x @ beta)
    assert len(tasks.rotated_logistic_tasks(3, 10)) == 3
    with pytest.raises(ValueError, match="splits"):
        tasks.split_digits(((0, 11),))
    with pytest.raises(ValueError, match="simple_fraction"):
        tasks.simple_and_complex(simple_fraction=1.5)


def test_figures_build():
    figs = [viz.stability_gap_figure(run("stability_gap_digits", steps_per_task=20)),
            viz.useful_figure(run("useful_simplicity", epochs=2)),
            viz.ibcl_figure(run("ibcl_tradeoffs", grid=2)),
            viz.double_descent_figure(run("double_descent", widths=(50, 100, 200))),
            viz.opposing_signals_figure(run("opposing_signals", steps=20)),
            viz.large_batch_figure(compare_large_batch(LargeBatchConfig(epochs=1))),
            viz.highdim_figure(run("highdim_dynamics", steps=50))]
    assert all(isinstance(f, go.Figure) and len(f.data) >= 1 for f in figs)
