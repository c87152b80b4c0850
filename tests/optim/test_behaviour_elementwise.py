"""Behaviour tests: on a toy, each paper's claimed effect."""
from __future__ import annotations

import pytest
import torch

from lab.optim.adabelief import AdaBelief
from lab.optim.adamp import SGDP, AdamP
from lab.optim.agd import AGD, sgd_fraction
from lab.optim.diffgrad import DiffGrad, friction
from lab.optim.lion import Lion
from lab.optim.lion_kappa import LionKappa, composite_objective

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# AdamP / SGDP: scale-invariant weights keep a small norm, hence a large effective step

def _train_scale_invariant(make_opt, steps=150):
    """Rows of W are normalized before use (as by a BatchNorm over outputs): L(c W) = L(W)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=gen, dtype=F64)
    target = torch.randn(64, 6, generator=gen, dtype=F64)
    w = torch.randn(6, 10, generator=gen, dtype=F64).requires_grad_(True)
    opt = make_opt([w])
    norm0 = w.detach().norm().item()
    for _ in range(steps):
        opt.zero_grad()
        w_dir = w / w.norm(dim=1, keepdim=True)                       # (6, 10)
        ((x @ w_dir.T - target) ** 2).mean().backward()
        opt.step()
    return norm0, w.detach().norm().item()


@pytest.mark.parametrize("projected,plain", [
    (lambda ps: AdamP(ps, lr=0.1), lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.0)),
    (lambda ps: SGDP(ps, lr=2.0, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=2.0, momentum=0.9)),
], ids=["adamp-vs-adamw", "sgdp-vs-sgd"])
def test_projection_slows_norm_growth_on_scale_invariant_weights(projected, plain):
    start, end_projected = _train_scale_invariant(projected)
    _, end_plain = _train_scale_invariant(plain)
    growth_projected, growth_plain = end_projected - start, end_plain - start
    assert growth_plain > 0.5 * start            # momentum inflates the norm of invariant weights
    assert growth_projected < 0.2 * growth_plain  # the projection removes most of that growth
    # effective step on the sphere ~ lr / ||W||^2: larger under the projected optimizer
    assert (start / end_projected) ** 2 > 1.5 * (start / end_plain) ** 2


# ---------------------------------------------------------------------------------------------
# AdaBelief: the step follows the "belief" |g - m|, not |g|

def _moves(make_opt, grads):
    p = torch.zeros(1, dtype=F64, requires_grad=True)
    opt = make_opt([p])
    moves = []
    for g in grads:
        before = p.detach().clone()
        p.grad = torch.tensor([g], dtype=F64)
        opt.step()
        moves.append(abs((p.detach() - before).item()))
    return torch.tensor(moves[50:]).mean().item()


def test_adabelief_large_steps_when_gradient_is_consistent_small_when_noisy():
    """Same mean gradient (1.0), two noise levels. Adam's step is ~ lr E[g]/sqrt(E[g^2]);
    AdaBelief's is ~ lr E[g]/std(g): far larger than Adam's when the gradient is predictable,
    and shrinking like 1/std(g) (down to Adam's size) when it is noisy."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(200, generator=gen, dtype=F64)
    consistent = (1.0 + 0.01 * noise).tolist()
    noisy = (1.0 + 3.0 * noise).tolist()
    adam = lambda ps: torch.optim.Adam(ps, lr=1e-3)  # noqa: E731
    belief = lambda ps: AdaBelief(ps, lr=1e-3, rectify=False)  # noqa: E731
    ratio_consistent = _moves(belief, consistent) / _moves(adam, consistent)
    ratio_noisy = _moves(belief, noisy) / _moves(adam, noisy)
    assert ratio_consistent > 5.0
    assert ratio_noisy < 1.5
    assert _moves(belief, noisy) < 0.1 * _moves(belief, consistent)


# ---------------------------------------------------------------------------------------------
# diffGrad: friction in [0.5, 1), damping where the gradient changes slowly

def test_diffgrad_friction_damps_slowly_changing_coordinates():
    # f(x, y) = x + 5 y^2: d/dx is constant (slow change), d/dy flips as y oscillates (fast change)
    xy = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
    opt = DiffGrad([xy], lr=0.3)
    xis = []
    for _ in range(40):
        opt.zero_grad()
        (xy[0] + 5 * xy[1] ** 2).backward()
        prev = opt.state[xy]["previous_grad"].clone() if opt.state[xy] else torch.zeros(2, dtype=F64)
        xis.append(friction(prev, xy.grad))
        opt.step()
    xis = torch.stack(xis)                                   # (40, 2)
    assert ((xis >= 0.5) & (xis < 1.0)).all()
    assert torch.allclose(xis[1:, 0], torch.full((39,), 0.5, dtype=F64))  # constant gradient
    assert xis[1:6, 1].min() > 0.85                           # y overshoots and flips: little friction


# ---------------------------------------------------------------------------------------------
# Lion and Lion-kappa: decoupled weight decay = a constraint, reached as the Lyapunov analysis says

def _lion_run(kappa, x_star, x0, lam=1.0, lr=0.01, steps=1500):
    x = x0.clone().requires_grad_(True)
    opt = Lion([x], lr=lr, weight_decay=lam) if kappa == "lion" else LionKappa(
        [x], lr=lr, weight_decay=lam, kappa=kappa)
    xs, fs = [x.detach().clone()], []
    for _ in range(steps):
        opt.zero_grad()
        f = 0.5 * ((x - x_star) ** 2).sum()
        f.backward()
        fs.append(f.item())
        opt.step()
        xs.append(x.detach().clone())
    return xs, fs


@pytest.mark.parametrize("kappa", ["lion", "l1"])
def test_lion_ends_in_the_box_and_solves_the_constrained_problem(kappa):
    x_star = torch.tensor([3.0, -2.0, 0.5], dtype=F64)
    x0 = torch.tensor([5.0, 5.0, -5.0], dtype=F64)
    lr, lam = 0.01, 1.0
    xs, fs = _lion_run(kappa, x_star, x0, lam, lr)
    inf_norms = torch.stack([x.abs().max() for x in xs])
    # Phase 1 (exact invariant): ||x_{t+1}||_inf <= (1 - lr lam) ||x_t||_inf + lr
    assert (inf_norms[1:] <= (1 - lr * lam) * inf_norms[:-1] + lr + 1e-12).all()
    # from outside, the excess over the box decays geometrically at rate (1 - lr lam)
    excess = (inf_norms - 1 / lam).clamp_min(0)
    t = torch.arange(len(excess), dtype=F64)
    assert (excess <= (1 - lr * lam) ** t * excess[0] + 1e-12).all()
    assert excess[-1] < 1e-5
    # Phase 2: once (numerically) in the box, f + indicator(box) = f keeps decreasing
    t_in = int((excess < 1e-3).nonzero()[0, 0])
    assert fs[-1] < fs[t_in]
    # and the iterate sits at the constrained minimizer clip(x*, -1/lam, 1/lam)
    torch.testing.assert_close(xs[-1], x_star.clamp(-1 / lam, 1 / lam), rtol=0, atol=3 * lr)


def test_composite_objective_is_f_plus_conjugate_term():
    x = [torch.tensor([0.5, -0.9], dtype=F64)]
    assert composite_objective("l1", 2.0, x, 1.0) == 2.0                      # inside the box
    assert composite_objective("l1", 2.0, x, 2.0) == float("inf")             # 0.9 > 1/2
    assert composite_objective("l2", 2.0, x, 1.0) == float("inf")             # ||x||_2 = 1.03
    assert composite_objective("half_l2", 2.0, x, 2.0) == pytest.approx(2.0 + 1.06)
    assert composite_objective("l2", 2.0, x, 0.0) == 2.0                      # no decay: F = f


def test_lion_kappa_l2_ends_in_the_ball():
    x_star = torch.tensor([3.0, -2.0, 0.5], dtype=F64)
    xs, fs = _lion_run("l2", x_star, torch.tensor([5.0, 5.0, -5.0], dtype=F64))
    norms = torch.stack([x.norm() for x in xs])
    assert (norms[1:] <= 0.99 * norms[:-1] + 0.01 + 1e-12).all()   # ||.||_2 version of phase 1
    assert norms[-1] <= 1.0 + 0.01
    torch.testing.assert_close(xs[-1], x_star / x_star.norm(), rtol=0, atol=0.05)
    assert fs[-1] < fs[len(fs) // 2]


def test_lion_kappa_half_l2_is_weight_decay_as_l2_regularization():
    x_star = torch.tensor([3.0, -2.0, 0.5], dtype=F64)
    xs, _ = _lion_run("half_l2", x_star, torch.zeros(3, dtype=F64), lam=0.5, lr=0.05, steps=800)
    torch.testing.assert_close(xs[-1], x_star / 1.5, rtol=0, atol=1e-6)   # argmin f + lam/2 ||x||^2


def test_lion_kappa_nuclear_ends_in_the_spectral_ball():
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=F64))
    x_star = u[:, :3] @ torch.diag(torch.tensor([3.0, 0.5, 0.2], dtype=F64)) @ v.T
    xs, _ = _lion_run("nuclear", x_star, torch.zeros(4, 3, dtype=F64), lr=0.01, steps=1200)
    singular = torch.linalg.svdvals(xs[-1])
    assert singular.max() <= 1.0 + 0.02
    # the minimizer clips the singular values of x* at 1/lambda = 1
    torch.testing.assert_close(singular, torch.tensor([1.0, 0.5, 0.2], dtype=F64), rtol=0, atol=0.05)


# ---------------------------------------------------------------------------------------------
# AGD: delta moves coordinates between the adaptive and the SGD regime

def test_agd_sgd_fraction_grows_with_delta():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 40, generator=gen, dtype=F64) * torch.logspace(-2, 1, 40, dtype=F64)
    y = torch.randn(64, generator=gen, dtype=F64)
    fractions = []
    for delta in (1e-8, 1e-4, 1e-2, 1e-1, 10.0):
        w = torch.zeros(40, dtype=F64, requires_grad=True)
        opt = AGD([w], lr=1e-3, delta=delta)
        for _ in range(30):
            opt.zero_grad()
            ((a @ w - y) ** 2).mean().backward()
            opt.step()
        fractions.append(sgd_fraction(opt))
    assert fractions == sorted(fractions)       # more SGD-like coordinates as delta grows
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert 0.0 < fractions[2] < 1.0             # in between: a mix, coordinate by coordinate


def _agd_steps_to(win, lr, tol=1e-8, steps=2000):
    # ill-conditioned quadratic, curvatures 1 .. 100, from theta = 1: steps until the loss < tol
    curvature = torch.logspace(0, 2, 20, dtype=F64)
    theta = torch.ones(20, dtype=F64, requires_grad=True)
    opt = AGD([theta], lr=lr, delta=1e-5, win=win)
    for t in range(1, steps + 1):
        opt.zero_grad()
        (0.5 * (curvature * theta ** 2).sum()).backward()
        opt.step()
        if 0.5 * (curvature * theta.detach() ** 2).sum() < tol:
            return t
    return steps + 1


@pytest.mark.parametrize("lr", [0.03, 0.1])
def test_agd_win_accelerates_on_an_ill_conditioned_quadratic(lr):
    # Win's claim (faster convergence than the plain adaptive method). On this toy it holds for
    # lr >= 0.01 (121 vs 154 steps at 0.03, 128 vs 173 at 0.1); at lr = 3e-3 Win is slower
    plain, win = _agd_steps_to(False, lr), _agd_steps_to(True, lr)
    assert plain <= 2000 and win < 0.85 * plain
