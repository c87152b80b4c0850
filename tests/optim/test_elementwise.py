"""Value tests of the elementwise optimizers: the spec's hand-computed steps, limits that reduce
to torch.optim, foreach == per-tensor in float64, invariants, edge cases, bad input."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from lab.optim.adabelief import AdaBelief
from lab.optim.adamp import SGDP, AdamP, project_radial
from lab.optim.agd import AGD, sgd_fraction
from lab.optim.diffgrad import DiffGrad
from lab.optim.lion import Lion
from lab.optim.lion_kappa import LionKappa
from lab.optim.signsgd import SignSGD
from lab.registry import make

F64 = torch.float64


def scalar_param(value=0.0):
    return torch.tensor([value], dtype=F64, requires_grad=True)


def feed(opt, param, grads):
    """Step ``opt`` with the given gradient sequence; return the list of moves of ``param``."""
    moves = []
    for g in grads:
        before = param.detach().clone()
        param.grad = torch.as_tensor(g, dtype=param.dtype).reshape(param.shape).clone()
        opt.step()
        moves.append(param.detach() - before)
    return moves


# ---------------------------------------------------------------------------------------------
# Hand-computed first steps (spec, section (6) of each optimizer)

def test_lion_worked_example():
    # Prepare: theta = 1, g = [0.5, -2, 0], eta = 1e-4, lambda = 0.1
    theta = torch.ones(3, dtype=F64, requires_grad=True)
    opt = Lion([theta], lr=1e-4, weight_decay=0.1)
    theta.grad = torch.tensor([0.5, -2.0, 0.0], dtype=F64)
    # Execute
    opt.step()
    # Assert: theta (1 - 1e-5) - 1e-4 sign(0.1 g); sign(0) = 0 gives no update
    torch.testing.assert_close(theta.detach(), torch.tensor([0.99989, 1.00009, 0.99999], dtype=F64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(opt.state[theta]["exp_avg"], torch.tensor([0.005, -0.02, 0.0], dtype=F64))


def test_signum_keeps_direction_signsgd_flips():
    # Prepare: a gradient that flips sign once, lr 0.1
    grads = [[2.0], [-1.0]]
    signum, plain = scalar_param(), scalar_param()
    # Execute
    m_moves = feed(SignSGD([signum], lr=0.1, momentum=0.9), signum, grads)
    s_moves = feed(SignSGD([plain], lr=0.1), plain, grads)
    # Assert: m = 0.2, then 0.18 - 0.1 = 0.08 > 0, so Signum keeps stepping down; signSGD flips
    assert [m.item() for m in m_moves] == pytest.approx([-0.1, -0.1])
    assert [m.item() for m in s_moves] == pytest.approx([-0.1, 0.1])


def test_adabelief_first_step_rectified_and_not():
    # g = 1 at t = 1, eta = 1e-3: rectify=False -> -eta/beta1 (m = 0.1, denom = 0.9);
    # rectify=True (rho_1 < 5) -> an SGD step -eta g
    a, b = scalar_param(), scalar_param()
    move_plain = feed(AdaBelief([a], rectify=False), a, [[1.0]])[0]
    move_rect = feed(AdaBelief([b]), b, [[1.0]])[0]
    assert move_plain.item() == pytest.approx(-1.0e-3 / 0.9, rel=1e-9)
    assert move_rect.item() == pytest.approx(-1.0e-3, rel=1e-12)


def test_adabelief_rectified_step_after_warmup_matches_formula():
    # With beta2 = 0.999, rho_t >= 5 first at t = 6; check t = 6 against the RAdam formula.
    p = scalar_param()
    grads = [[1.0], [0.5], [1.5], [1.0], [0.8], [1.2]]
    moves = feed(AdaBelief([p], eps=0.0), p, grads)
    b1, b2 = 0.9, 0.999
    m = s = 0.0
    for (g,) in grads:
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2
    t = 6
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
    assert rho_t == pytest.approx(5.994, abs=1e-3)
    r_t = math.sqrt((1 - b2**t) * (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    expected = -1e-3 * r_t / (1 - b1**t) * m / math.sqrt(s)
    assert moves[-1].item() == pytest.approx(expected, rel=1e-9)


def test_diffgrad_friction_worked_example():
    # t = 1, g = 1: xi = sigmoid(1) = 0.731059 -> -7.31059e-4; then g = 1 again: xi = sigmoid(0) = 0.5
    p = scalar_param()
    moves = feed(DiffGrad([p], eps=0.0), p, [[1.0], [1.0]])
    assert moves[0].item() == pytest.approx(-7.31059e-4, rel=1e-6)
    assert moves[1].item() == pytest.approx(-0.5e-3, rel=1e-9)  # Adam (eps=0) would step -1e-3


def test_diffgrad_is_friction_times_adam():
    # With eps = 0 (Form A = Form B) and no weight decay, m and v depend only on the gradients,
    # so each diffGrad move is xi = sigmoid(|g_prev - g|) times torch Adam's move.
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=gen, dtype=F64) for _ in range(12)]
    a = torch.zeros(5, dtype=F64, requires_grad=True)
    d = torch.zeros(5, dtype=F64, requires_grad=True)
    adam_moves = feed(torch.optim.Adam([a], lr=1e-2, eps=0.0), a, grads)
    diff_moves = feed(DiffGrad([d], lr=1e-2, eps=0.0), d, grads)
    prev = torch.zeros(5, dtype=F64)
    for g, am, dm in zip(grads, adam_moves, diff_moves):
        xi = torch.sigmoid((prev - g).abs())
        torch.testing.assert_close(dm, xi * am, rtol=1e-10, atol=1e-15)
        prev = g


def test_diffgrad_independent_of_zero_grad_mode():
    # The v1 bug (previous_grad aliasing p.grad) shows only with in-place zeroing.
    def run(set_to_none):
        p = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
        opt = DiffGrad([p], lr=0.1)
        for _ in range(5):
            opt.zero_grad(set_to_none=set_to_none)
            (p ** 2).sum().backward()
            opt.step()
        return p.detach()

    torch.testing.assert_close(run(True), run(False), rtol=0, atol=0)


@pytest.mark.parametrize("name, kwargs", [
    ("adabelief", {"weight_decouple": False}), ("agd", {"weight_decouple": False}), ("diffgrad", {}),
])
@pytest.mark.parametrize("foreach", [True, False])
def test_l2_weight_decay_leaves_p_grad_untouched(name, kwargs, foreach):
    # The docstrings' choice: the L2 term lambda theta is added to a new gradient tensor, so the
    # gradient the user reads after step() is the loss gradient (the references add it in place).
    p = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64, requires_grad=True)
    opt = make("optimizer", name, [p], lr=0.1, weight_decay=0.5, foreach=foreach, **kwargs)
    g = torch.tensor([[0.3, -0.1], [0.2, 0.4]], dtype=F64)
    for _ in range(2):
        p.grad = g.clone()
        opt.step()
        assert torch.equal(p.grad, g)


def test_adamp_worked_projection():
    # p = [[3, 4]], g = [[4, -3]] (cos = 0 -> projected), t = 1, eta = 1e-3
    p = torch.tensor([[3.0, 4.0]], dtype=F64, requires_grad=True)
    opt = AdamP([p])
    p.grad = torch.tensor([[4.0, -3.0]], dtype=F64)
    opt.step()
    move = p.detach() - torch.tensor([[3.0, 4.0]], dtype=F64)
    torch.testing.assert_close(move, torch.tensor([[-1.12e-3, 8.4e-4]], dtype=F64), rtol=1e-6, atol=0)
    # the projected move is orthogonal to p (up to eps)
    assert abs(float((move * torch.tensor([[3.0, 4.0]], dtype=F64)).sum())) < 1e-10


def test_adamp_projected_tensor_gets_weight_decay_ratio():
    p0 = torch.tensor([[3.0, 4.0]], dtype=F64)
    p = p0.clone().requires_grad_(True)
    opt = AdamP([p], lr=1e-2, weight_decay=0.5, wd_ratio=0.1)
    grad = torch.tensor([[4.0, -3.0]], dtype=F64)
    p.grad = grad
    opt.step()
    # projection removes the radial part, so <p_new, p0> = <p0 (1 - eta lambda r), p0> exactly
    radial = float((p.detach() * p0).sum() / (p0 * p0).sum())
    assert radial == pytest.approx(1 - 1e-2 * 0.5 * 0.1, rel=1e-9)


def test_project_radial_skips_vectors_and_correlated_gradients():
    p = torch.tensor([3.0, 4.0], dtype=F64)
    u = torch.tensor([1.0, 1.0], dtype=F64)
    assert project_radial(p, u, u, delta=0.1, eps=1e-8, wd_ratio=0.1) == (u, 1.0)
    w = torch.tensor([[3.0, 4.0]], dtype=F64)
    out, r = project_radial(w, w.clone(), u.reshape(1, 2), delta=0.1, eps=1e-8, wd_ratio=0.1)
    assert r == 1.0 and torch.equal(out, u.reshape(1, 2))  # gradient parallel to w: not invariant


def test_a_zero_gradient_counts_as_scale_invariant():
    # AdamP's choice (as F.cosine_similarity): cos(0, w) = 0 < delta/sqrt(n), so the tensor is
    # treated as scale-invariant: the radial part of u is removed and the decay ratio applies.
    w = torch.tensor([[3.0, 4.0]], dtype=F64)
    u = torch.tensor([[1.0, 1.0]], dtype=F64)
    out, r = project_radial(w, torch.zeros_like(w), u, delta=0.1, eps=1e-8, wd_ratio=0.1)
    assert r == 0.1
    assert abs(float((out * w).sum())) < 1e-7 and not torch.equal(out, u)


def test_agd_worked_examples():
    # beta = (0.9, 0.999), delta = 1e-5, eta = 1e-3 (spec section (6))
    p = scalar_param()
    moves = feed(AGD([p], lr=1e-3, delta=1e-5), p, [[1.0]] * 5)
    assert [-m.item() for m in moves] == pytest.approx(
        [1.0e-3, 1.4146e-3, 1.7329e-3, 2.0015e-3, 2.2383e-3], rel=2e-4)
    q = scalar_param()
    moves = feed(AGD([q], lr=1e-3, delta=1e-5), q, [[1.0], [-1.0], [1.0]])
    assert [m.item() for m in moves] == pytest.approx([-1.0e-3, 5.1265e-5, -3.8705e-4], rel=2e-4)


def test_agd_win_worked_example():
    # theta_0 = 1, g = 0.5, eta = 0.1, t = 1: eta' = eta sqrt(1 - 0.999)/(1 - 0.9) = 0.0316228 and
    # u = m/D = 0.05/sqrt(0.00025) = 3.16228, so eta' u = 0.1 (Adam's first step)
    for lam, z_expected, theta_expected in [
        (0.0, 0.9, (0.8 + 2 * 0.9) / 3),                               # tau = 1/3
        (0.1, 0.9 / (1 + 0.1 * 0.0316228), 0.8629560),                 # tau = 1/(3 + 2 eta' lambda)
    ]:
        p = scalar_param(1.0)
        opt = AGD([p], lr=0.1, delta=1e-5, weight_decay=lam, win=True)
        feed(opt, p, [[0.5]])
        assert opt.state[p]["z"].item() == pytest.approx(z_expected, rel=1e-6)
        assert p.item() == pytest.approx(theta_expected, rel=1e-6)


def test_agd_win_needs_decoupled_decay_and_keeps_z_in_the_state():
    p = scalar_param(1.0)
    with pytest.raises(ValueError, match="weight_decouple"):
        AGD([p], win=True, weight_decouple=False)
    with pytest.raises(ValueError, match="fixed_decay"):
        AGD([p], win=True, fixed_decay=True)
    opt = AGD([p], lr=0.1, win=True)
    feed(opt, p, [[0.5], [0.2]])
    q = scalar_param(p.item())
    clone = AGD([q], lr=0.1, win=True)
    clone.load_state_dict(copy.deepcopy(opt.state_dict()))   # load_state_dict shares same-dtype tensors
    assert torch.equal(clone.state[q]["z"], opt.state[p]["z"])
    feed(opt, p, [[0.3]])
    feed(clone, q, [[0.3]])
    assert torch.equal(p.detach(), q.detach())


def test_agd_large_delta_is_sgd_with_momentum():
    # delta above every sqrt(b_hat): theta <- theta - (eta/delta) m_hat
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(4, generator=gen, dtype=F64) for _ in range(6)]
    p = torch.zeros(4, dtype=F64, requires_grad=True)
    moves = feed(AGD([p], lr=0.5, delta=1e3), p, grads)
    m = torch.zeros(4, dtype=F64)
    for t, (g, move) in enumerate(zip(grads, moves), start=1):
        m = 0.9 * m + 0.1 * g
        torch.testing.assert_close(move, -(0.5 / 1e3) * m / (1 - 0.9**t), rtol=1e-10, atol=1e-18)
    opt = AGD([p], lr=0.5, delta=1e3)
    feed(opt, p, grads[:1])
    assert sgd_fraction(opt) == 1.0


def test_agd_constant_gradient_jump_and_clip():
    # constant g: s_t = 0 after t = 1, so b_hat shrinks (~1/t); the step grows until
    # sqrt(b_hat) < delta (t ~ 100 for delta = 0.1), then it is the SGD step eta m_hat / delta.
    p, q = scalar_param(), scalar_param()
    free = [abs(m.item()) for m in feed(AGD([p], lr=1e-3, delta=0.1), p, [[1.0]] * 200)]
    clipped = [abs(m.item()) for m in feed(AGD([q], lr=1e-3, delta=0.1, clip=5.0), q, [[1.0]] * 200)]
    assert free[-1] == pytest.approx(1e-3 / 0.1, rel=1e-6)    # m_hat = 1 for a constant g = 1
    assert all(a < b for a, b in zip(free[:50], free[1:51]))   # growing in the adaptive phase
    bound = [1e-3 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * 5.0 for t in range(1, 201)]
    assert all(c <= b * (1 + 1e-12) for c, b in zip(clipped, bound))
    assert clipped[-1] < free[-1] / 2


def test_sgdp_and_adamp_reduce_to_torch_when_delta_is_zero():
    # delta = 0: the scale-invariance test never passes, no projection
    gen = torch.Generator().manual_seed(2)
    target = torch.randn(4, 3, generator=gen, dtype=F64)

    def train(make_opt):
        w = torch.zeros(4, 3, dtype=F64) + 0.5
        w.requires_grad_(True)
        b = torch.zeros(3, dtype=F64, requires_grad=True)
        opt = make_opt([w, b])
        for _ in range(20):
            opt.zero_grad()
            (((w - target) ** 2).sum() + ((b - 1) ** 4).sum()).backward()
            opt.step()
        return torch.cat([w.detach().flatten(), b.detach()])

    torch.testing.assert_close(
        train(lambda ps: AdamP(ps, lr=1e-2, weight_decay=0.1, delta=0.0)),
        train(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)), rtol=1e-10, atol=1e-12)
    for nesterov in (False, True):
        torch.testing.assert_close(
            train(lambda ps: SGDP(ps, lr=1e-2, momentum=0.9, nesterov=nesterov, delta=0.0)),
            train(lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=nesterov)),
            rtol=1e-10, atol=1e-12)


def test_lion_with_equal_betas_is_signum():
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(6, generator=gen, dtype=F64) for _ in range(10)]
    a = torch.ones(6, dtype=F64, requires_grad=True)
    b = torch.ones(6, dtype=F64, requires_grad=True)
    feed(Lion([a], lr=0.01, betas=(0.8, 0.8), weight_decay=0.1), a, grads)
    feed(SignSGD([b], lr=0.01, momentum=0.8, weight_decay=0.1), b, grads)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Lion-kappa invariants

def test_lion_kappa_l1_is_lion_bit_for_bit():
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(3, 4, generator=gen, dtype=F64) for _ in range(15)]
    a = torch.ones(3, 4, dtype=F64, requires_grad=True)
    b = torch.ones(3, 4, dtype=F64, requires_grad=True)
    feed(Lion([a], lr=0.01, weight_decay=0.5), a, grads)
    feed(LionKappa([b], lr=0.01, weight_decay=0.5, kappa="l1"), b, grads)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kappa", ["l1", "l2", "half_l2", "nuclear"])
def test_lion_kappa_zero_gradient_is_pure_decay(kappa):
    # g = 0 and m = 0: x_t = (1 - eps lambda)^t x_0, for every kappa (grad_kappa(0) = 0)
    x0 = torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=F64)
    x = x0.clone().requires_grad_(True)
    feed(LionKappa([x], lr=0.1, weight_decay=0.5, kappa=kappa), x, [torch.zeros(2, 2)] * 7)
    torch.testing.assert_close(x.detach(), x0 * (1 - 0.05) ** 7, rtol=1e-12, atol=0)


def test_lion_kappa_l2_moves_each_tensor_by_lr():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 3, generator=gen, dtype=F64, requires_grad=True)
    moves = feed(LionKappa([x], lr=0.07, kappa="l2"), x,
                 [torch.randn(5, 3, generator=gen, dtype=F64) for _ in range(4)])
    assert [m.norm().item() for m in moves] == pytest.approx([0.07] * 4, rel=1e-12)


def test_lion_kappa_nuclear_step_is_an_orthogonal_matrix_times_lr():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 3, generator=gen, dtype=F64, requires_grad=True)
    move = feed(LionKappa([x], lr=0.2, kappa="nuclear"), x, [torch.randn(4, 3, generator=gen, dtype=F64)])[0]
    singular = torch.linalg.svdvals(move / 0.2)
    torch.testing.assert_close(singular, torch.ones(3, dtype=F64), rtol=1e-10, atol=1e-10)


def test_lion_kappa_nuclear_drops_the_null_part_and_is_l2_on_vectors():
    # Docstring choices: singular values below max(S) n eps are dropped, so a rank-1 c gives the
    # rank-1 polar factor u v^T (not round-off directions); a 1-D tensor is a 1 x n matrix: l2.
    u = torch.tensor([1.0, 2.0, 2.0], dtype=F64) / 3
    v = torch.tensor([0.6, 0.8], dtype=F64)
    x = torch.zeros(3, 2, dtype=F64, requires_grad=True)
    move = feed(LionKappa([x], lr=0.2, kappa="nuclear"), x, [5.0 * torch.outer(u, v)])[0]
    torch.testing.assert_close(move, -0.2 * torch.outer(u, v), rtol=1e-10, atol=1e-12)
    g = torch.tensor([3.0, -4.0], dtype=F64)
    y, z = (torch.zeros(2, dtype=F64, requires_grad=True) for _ in range(2))
    nuclear = feed(LionKappa([y], lr=0.2, kappa="nuclear"), y, [g])[0]
    l2 = feed(LionKappa([z], lr=0.2, kappa="l2"), z, [g])[0]
    torch.testing.assert_close(nuclear, l2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(l2, -0.2 * g / 5)


def test_lion_kappa_half_l2_first_step_is_scaled_gradient():
    x = torch.ones(3, dtype=F64, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 4.0], dtype=F64)
    move = feed(LionKappa([x], lr=0.5, kappa="half_l2"), x, [g])[0]
    torch.testing.assert_close(move, -0.5 * 0.1 * g)  # c = (1 - beta1) g


# ---------------------------------------------------------------------------------------------
# foreach path == per-tensor path, float64

CASES = [
    ("signsgd", {}),
    ("signsgd", dict(momentum=0.9, weight_decay=0.1)),
    ("lion", dict(lr=1e-2, weight_decay=0.3)),
    ("lion_kappa", dict(lr=1e-2, weight_decay=0.3, kappa="l2")),
    ("lion_kappa", dict(lr=1e-2, kappa="half_l2", maximize=True)),
    ("lion_kappa", dict(lr=1e-2, weight_decay=0.3, kappa="nuclear")),
    ("adabelief", dict(lr=1e-2, weight_decay=0.1)),
    ("adabelief", dict(lr=1e-2, weight_decay=0.1, rectify=False, amsgrad=True, weight_decouple=False)),
    ("adabelief", dict(lr=1e-2, weight_decay=0.1, fixed_decay=True, degenerated_to_sgd=False)),
    ("diffgrad", dict(lr=1e-2, weight_decay=0.1)),
    ("adamp", dict(lr=1e-2, weight_decay=0.1)),
    ("adamp", dict(lr=1e-2, weight_decay=0.1, nesterov=True)),
    ("sgdp", dict(lr=1e-2, momentum=0.9, weight_decay=0.1, nesterov=True)),
    ("sgdp", dict(lr=1e-2, momentum=0.9, dampening=0.1)),
    ("agd", dict(lr=1e-2, delta=1e-5, weight_decay=0.1)),
    ("agd", dict(lr=1e-2, delta=1e-2, amsgrad=True, clip=1.0, weight_decouple=False, weight_decay=0.1)),
    ("agd", dict(lr=1e-2, delta=1e-5, weight_decay=0.1, win=True)),
    ("agd", dict(lr=1e-2, delta=1e-2, amsgrad=True, clip=1.0, weight_decay=0.1, win=True)),
]


def _train(name, kwargs, foreach, steps=12):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 4, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=F64, requires_grad=True)
    v = torch.randn(4, 3, generator=gen, dtype=F64, requires_grad=True)   # scale-invariant use
    c = torch.randn(2, 3, 2, generator=gen, dtype=F64, requires_grad=True)  # gets grads every 2nd step
    x = torch.randn(8, 5, generator=gen, dtype=F64)
    opt = make("optimizer", name, [w, b, v, c], foreach=foreach, **kwargs)
    for step in range(steps):
        opt.zero_grad()
        h = torch.tanh(x @ w + b)                                     # (8, 4)
        v_dir = v / v.norm(dim=1, keepdim=True)                       # rows normalized: scale-invariant
        loss = ((h @ v_dir) ** 2).mean() + (h.sum() - 1) ** 2
        if step % 2 == 0:
            loss = loss + (c ** 3).sum() * 0.1
        loss.backward()
        opt.step()
    return [t.detach() for t in (w, b, v, c)], opt


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_foreach_equals_per_tensor_float64(name, kwargs):
    fast, opt_fast = _train(name, kwargs, foreach=True)
    slow, opt_slow = _train(name, kwargs, foreach=False)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    for p_fast, p_slow in zip(opt_fast.param_groups[0]["params"], opt_slow.param_groups[0]["params"]):
        for key, value in opt_fast.state[p_fast].items():
            torch.testing.assert_close(value, opt_slow.state[p_slow][key], rtol=1e-13, atol=1e-15)


def test_foreach_is_the_default_path(monkeypatch):
    calls = []
    original = torch._foreach_lerp_

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_lerp_", spy)
    p = torch.ones(3, requires_grad=True)
    opt = Lion([p])
    p.grad = torch.ones(3)
    opt.step()
    assert calls, "Lion with foreach=None did not take the torch._foreach_* path"


# ---------------------------------------------------------------------------------------------
# Edge cases and bad input

MINE = ["signsgd", "lion", "lion_kappa", "adabelief", "diffgrad", "adamp", "sgdp", "agd"]


SCALE_FREE = ["signsgd", "lion", "lion_kappa", "adamp"]
"""Updates invariant to the gradient's scale (signs; AdamP's ratio m/sqrt(v), eps negligible)."""
OVERFLOW_TO_ZERO_STEP = ["adamp", "diffgrad", "agd"]
"""In float32, g = 1e30 makes g^2 (or (g_t - g_{t-1})^2) overflow: v = inf and m/sqrt(v) = 0, so
the step is exactly zero, as torch.optim.Adam's would be. Finite, and what the arithmetic gives."""


def _scaled_run(name, value):
    p = torch.ones(3, 2, requires_grad=True)
    opt = make("optimizer", name, [p], lr=1e-3)
    for t in range(7):
        p.grad = torch.full((3, 2), value) * (1 + 0.1 * t)  # a slowly growing gradient
        opt.step()
    return p.detach()


@pytest.mark.parametrize("name", MINE)
def test_zero_large_and_huge_gradients(name):
    zero, one, large, huge = (_scaled_run(name, v) for v in (0.0, 1.0, 1e18, 1e30))
    assert torch.equal(zero, torch.ones(3, 2))  # no gradient, no weight decay: nothing moves
    assert all(torch.isfinite(p).all() for p in (one, large, huge))
    if name in SCALE_FREE:  # 1e18 times the gradient: the very same steps
        torch.testing.assert_close(large, one, rtol=1e-6, atol=1e-7)
    if name in OVERFLOW_TO_ZERO_STEP:
        assert torch.equal(huge, torch.ones(3, 2))
    elif name in ("signsgd", "lion", "lion_kappa"):
        torch.testing.assert_close(huge, one, rtol=1e-6, atol=1e-7)
    elif name == "sgdp":
        # plain SGD (momentum 0): theta = 1 - lr sum_t g_t, sum (1 + 0.1 t) = 9.1. At 1e30 the
        # squared norm in the scale-invariance test overflows (cos = 0, "invariant"), exactly as
        # the reference's F.cosine_similarity does; at 1e18 it does not.
        torch.testing.assert_close(large, torch.full((3, 2), 1 - 1e-3 * 1e18 * 9.1), rtol=1e-5, atol=0)
    else:  # AdaBelief: its first 5 steps are SGD-momentum steps (rectification), of size ~ lr g
        assert name == "adabelief" and (huge < -1e26).all()


BAD = [(name, "lr", -1.0) for name in MINE] + [(name, "lr", 0.0) for name in MINE] + [
    ("lion", "betas", (1.0, 0.99)), ("lion_kappa", "betas", (0.9, -0.1)),
    ("adabelief", "betas", (0.9, 1.5)), ("diffgrad", "eps", -1e-8), ("adamp", "delta", -0.1),
    ("adamp", "wd_ratio", 2.0), ("sgdp", "momentum", 1.0), ("sgdp", "dampening", 1.5),
    ("signsgd", "momentum", -0.5), ("agd", "delta", 0.0), ("agd", "clip", -1.0),
    ("lion_kappa", "kappa", "linf"), ("adabelief", "weight_decay", -0.1), ("lion", "weight_decay", -1.0),
]


@pytest.mark.parametrize("name,arg,value", BAD, ids=[f"{n}-{a}={v}" for n, a, v in BAD])
def test_bad_hyperparameter_raises_value_error_naming_it(name, arg, value):
    p = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError) as info:
        make("optimizer", name, [p], **{arg: value})
    message = str(info.value)
    assert arg in message
    shown = value if isinstance(value, (str, tuple)) else float(value)
    assert any(str(v) in message for v in (shown if isinstance(shown, tuple) else (shown,)))


@pytest.mark.parametrize("name", MINE)
def test_non_number_lr_raises_type_error(name):
    with pytest.raises(TypeError, match="lr"):
        make("optimizer", name, [torch.ones(2, requires_grad=True)], lr="0.1")


def test_cpu_buckets_are_cut_into_cache_sized_chunks():
    from lab.optim._common import CPU_CHUNK_NUMEL, by_device_dtype, by_step

    big = torch.zeros(CPU_CHUNK_NUMEL // 2 + 1)
    small = torch.zeros(10)
    tensors = [big, big.clone(), small, big.clone().double()]
    chunks = by_device_dtype(tensors)
    assert [len(c[0]) for c in chunks] == [1, 2, 1]          # float32 split, float64 apart
    assert sum(sum(t.numel() for t in c[0]) for c in chunks[:2]) == 2 * big.numel() + 10
    buckets = by_step([1.0, 2.0, 1.0, 1.0], tensors)
    assert [(t, len(c[0])) for t, c in buckets] == [(1.0, 2), (2.0, 1), (1.0, 1)]
