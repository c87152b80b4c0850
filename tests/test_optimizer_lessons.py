"""The optimizer lessons (notebooks 00-05): divergence reports, the trajectory view, the batched
sharp/flat toy against separate SAM/WSAM optimizers, and the claims each lesson shows."""
import pathlib

import numpy as np
import pytest
import torch

from lab.claims import claims_for
from tests._shared import check_lesson_opening, check_panels_show_claims
from lab.experiments import run
from lab.experiments.optimizers import SurfaceCompareConfig, compare_on_surface
from lab.optim.sam import SAM
from lab.optim.wsam import WSAM
from lab.viz import trajectory_figure
from toy_envs.sharp_flat import BOX, sharp_flat_grad, sharp_flat_hessian, sharp_flat_loss
from toy_envs.surfaces import get_surface

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---- divergence is reported -----------------------------------------------------------------------
def test_sgd_divergence_is_recorded_with_its_step_and_a_warning():
    # Prepare: x_{t+1} = (1 - 50 lr) x_t = -49 x_t at lr 1: |x| = 1.5 * 49^t passes 1e6 at t = 4,
    # so the update of step 3 leaves the box
    h = run("optimizer_on_surface", optimizer="sgd", surface="quadratic", lr=1.0, steps=50)
    # Assert
    assert h.meta["diverged"] == 3
    assert "diverged at step 3" in h.meta["warning"] and "lr" in h.meta["warning"]
    assert len(h["xy"]) == 4 and np.isfinite(h["xy"]).all()          # the path up to the blow-up
    np.testing.assert_allclose(h["xy"][:, 0], 1.5 * (-49.0) ** np.arange(4))
    assert len(h.artifacts["effective_step"]) == 3


def test_a_run_that_grows_without_blowing_up_gets_a_warning_and_a_converging_one_none():
    # lr = 0.041 > 2/kappa: |x| grows by 1.05 a step, 1.5 * 1.05^100 ~ 200 < 1e6
    growing = run("optimizer_on_surface", optimizer="sgd", surface="quadratic", lr=0.041, steps=100)
    steady = run("optimizer_on_surface", optimizer="sgd", surface="quadratic", lr=0.02, steps=100)
    assert "diverged" not in growing.meta and "ended higher" in growing.meta["warning"]
    assert "warning" not in steady.meta and "diverged" not in steady.meta


# ---- the trajectory view follows the start and the path -------------------------------------------
def test_view_holds_range_points_and_leaves_out_blow_ups():
    s = get_surface("quadratic")                                      # range [-2, 2] x [-2, 2]
    (x_lo, x_hi), (y_lo, y_hi) = s.view([[4.5, -4.5]], pad=0.0)
    assert (x_lo, x_hi, y_lo, y_hi) == (-2.0, 4.5, -4.5, 2.0)
    assert s.view([[1e6, 0.0], [np.nan, 1.0]], pad=0.0) == ((-2.0, 2.0), (-2.0, 2.0))
    (x_lo, x_hi), _ = s.view([], pad=0.1)
    assert x_lo == pytest.approx(-2.4) and x_hi == pytest.approx(2.4)
    xs, ys, z = s.grid(5, (0.0, 4.0), (-1.0, 1.0))
    assert xs[-1] == 4.0 and ys[0] == -1.0 and z[0, -1] == pytest.approx(0.5 * (50 * 16 + 1))
    with pytest.raises(ValueError, match="x_range"):
        s.grid(5, (1.0, 1.0), None)


def test_trajectory_figure_shows_a_far_start_a_start_marker_and_where_a_run_diverged():
    runs = compare_on_surface(SurfaceCompareConfig(optimizers=("sgd", "adam"), surface="quadratic",
                                                   lr=0.045, steps=100, x0=4.5, y0=-4.5))
    fig = trajectory_figure(runs)
    x_lo, x_hi = fig.layout.xaxis.range
    y_lo, y_hi = fig.layout.yaxis.range
    assert x_lo < -2 and x_hi > 4.5 and y_lo < -4.5 and y_hi > 2          # start and path in view
    names = [t.name for t in fig.data]
    assert "start" in names and any(n.startswith("sgd: diverged at step") for n in names)
    start = next(t for t in fig.data if t.name == "start")
    assert list(start.x) == [4.5] and list(start.y) == [-4.5]
    for trace in fig.data[1:]:
        assert np.isfinite(np.asarray(trace.x, dtype=float)).all()


# ---- the batched sharp/flat toy is K separate optimizers -------------------------------------------
def _separate_runs(make, steps=6, starts=3, noise=0.3, seed=4):
    """K independent points, each with its own optimizer, fed the experiment's noise draws."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([BOX[0][0], BOX[1][0]], dtype=torch.float64)
    hi = torch.tensor([BOX[0][1], BOX[1][1]], dtype=torch.float64)
    init = lo + (hi - lo) * torch.rand(starts, 2, generator=g, dtype=torch.float64)
    points = [init[k].clone().requires_grad_(True) for k in range(starts)]
    opts = [make([w]) for w in points]
    paths = [[w.detach().clone()] for w in points]
    for _ in range(steps):
        draw = noise * torch.randn(starts, 2, generator=g, dtype=torch.float64)
        for k, (w, opt) in enumerate(zip(points, opts)):
            def closure(w=w, k=k):
                with torch.no_grad():
                    w.grad = sharp_flat_grad(w.detach()) + draw[k]
                    return sharp_flat_loss(w.detach())
            if getattr(opt, "requires_closure", False):
                opt.step(closure)
            else:
                closure()
                opt.step()
            paths[k].append(w.detach().clone())
    return torch.stack([torch.stack(p) for p in paths])              # (K, steps + 1, 2)


@pytest.mark.parametrize("spec,make", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.05)),
    ("sam", lambda p: SAM(p, lr=0.05, rho=0.5)),
    ("sam(adaptive=True)", lambda p: SAM(p, lr=0.05, rho=0.5, adaptive=True)),
    ("wsam", lambda p: WSAM(p, lr=0.05, rho=0.5, gamma=0.75)),
    ("wsam(decouple=False)", lambda p: WSAM(p, lr=0.05, rho=0.5, gamma=0.75, decouple=False)),
    ("sam(base_optimizer='sgd(momentum=0.9)')", lambda p: SAM(p, "sgd(momentum=0.9)", lr=0.05, rho=0.5)),
])
def test_batched_toy_matches_one_optimizer_per_start(spec, make):
    # Prepare / Execute: the experiment's batch of 3 runs, and 3 separate optimizers
    h = run("sharp_flat", optimizer=spec, steps=6, starts=3, noise=0.3, seed=4, lr=0.05, rho=0.5,
            gamma=0.75, eigen_every=3)
    expected = _separate_runs(make)
    # Assert: the same paths, to rounding
    torch.testing.assert_close(torch.tensor(h.artifacts["paths"], dtype=torch.float64), expected,
                               rtol=0, atol=1e-12)


def test_one_sam_over_the_whole_batch_would_differ():
    # The reason for one ball per run: a single SAM over the (K, 2) tensor normalizes by the norm
    # of all runs' gradients together
    h = run("sharp_flat", optimizer="sam", steps=6, starts=3, noise=0.3, seed=4, lr=0.05, rho=0.5)
    g = torch.Generator().manual_seed(4)
    lo = torch.tensor([BOX[0][0], BOX[1][0]], dtype=torch.float64)
    hi = torch.tensor([BOX[0][1], BOX[1][1]], dtype=torch.float64)
    w = (lo + (hi - lo) * torch.rand(3, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    joint = SAM([w], lr=0.05, rho=0.5)
    draw = 0.3 * torch.randn(3, 2, generator=g, dtype=torch.float64)

    def closure():
        with torch.no_grad():
            w.grad = sharp_flat_grad(w.detach()) + draw
            return sharp_flat_loss(w.detach()).sum()
    joint.step(closure)
    batched = torch.tensor(h.artifacts["paths"], dtype=torch.float64)[:, 1]
    assert not torch.allclose(w.detach(), batched, atol=1e-6)


def test_toy_hessian_matches_autograd_and_the_wells_curvatures():
    w = torch.tensor([[0.3, -0.7], [-1.0, 0.0], [1.2, 0.0]], dtype=torch.float64)
    analytic = sharp_flat_hessian(w)                                    # (3, 2, 2)
    for k in range(3):
        auto = torch.autograd.functional.hessian(sharp_flat_loss, w[k])
        torch.testing.assert_close(analytic[k], auto)
    grad = sharp_flat_grad(w)
    auto_grad = torch.stack([torch.autograd.functional.jacobian(sharp_flat_loss, w[k]) for k in range(3)])
    torch.testing.assert_close(grad, auto_grad)
    # at the sharp centre the Hessian is (h_s / s_s^2 + c) I plus the flat well's small share
    assert torch.linalg.eigvalsh(analytic[1])[1] > 25.0


def test_sharp_flat_rejects_a_closure_free_misuse_and_bad_noise():
    with pytest.raises(ValueError, match="noise"):
        run("sharp_flat", noise=-1.0)
    with pytest.raises(TypeError, match="gamma"):
        run("sharp_flat", optimizer="sam(gamma=0.5)", steps=2)
    with pytest.raises(ValueError, match="max_norm"):
        run("sharp_flat", optimizer="wsam(max_norm=1.0)", steps=2)


# ---- the lessons show their claims ------------------------------------------------------------------
PANELS = {
    "00_tour": {"tour"},
    "01_optimizers_on_surfaces": {"surfaces"},
    "02_sharpness": {"toy", "digits"},
    "03_training_small_nets": {"digits"},
    "04_memory_efficient": {"memory"},
    "05_evolution_strategies": {"regression", "cartpole", "rank"},
}


@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_every_panel_has_a_claim_and_the_notebook_renders_it(notebook):
    check_panels_show_claims(notebook, PANELS[notebook])


@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_every_lesson_opens_with_what_to_see_what_to_move_and_a_question(notebook):
    # after the first cell (how to start) and before the first panel
    check_lesson_opening(notebook, ("**Move first.**", "**Check yourself.**"))


@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_readme_lesson_map_lists_the_claims_verbatim(notebook):
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| [`{notebook}`]"))
    for claim in claims_for(notebook):
        assert f"**Claim:** {claim.text}" in row, claim.id
