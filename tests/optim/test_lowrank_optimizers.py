"""GaLore, Fira, FRUGAL, BAdam, GradNormLoRP: exact checks from the spec, invariants, behaviour."""
import copy
import math

import pytest
import torch
from torch import nn

from lab.optim._common import SparseGradientError
from lab.optim.badam import BAdam, module_blocks
from lab.optim.fira import Fira, norm_growth_limit
from lab.optim.frugal import FRUGAL
from lab.optim.galore import GaLore
from lab.optim.gradnorm_lorp import GradNormLoRP, weight_norm_grads
from lab.registry import make

D64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mlp(seed=0, dtype=torch.float32, hidden=(16, 16)):
    torch.manual_seed(seed)  # nn.Linear init reads the global generator; the tests own it
    dims = [8, *hidden, 3]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def _data(dtype=torch.float32, n=64):
    g = _gen(1)
    x = torch.randn(n, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _train(model, opt, steps, data):
    x, y = data
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


METHODS = {
    "galore": lambda ps: GaLore(ps, lr=1e-2, rank=4, update_proj_gap=5),
    "galore_random": lambda ps: GaLore(ps, lr=1e-2, rank=4, update_proj_gap=5, projection="random"),
    "fira": lambda ps: Fira(ps, lr=1e-2, rank=4, update_proj_gap=5),
    "frugal_svd": lambda ps: FRUGAL(ps, lr=1e-2, density=0.25, update_proj_gap=5),
    "frugal_random": lambda ps: FRUGAL(ps, lr=1e-2, density=0.25, update_proj_gap=5, projection="random"),
    "frugal_coordinates": lambda ps: FRUGAL(ps, lr=1e-2, density=0.25, update_proj_gap=5,
                                            projection="coordinates", state_free_rule="sgd"),
    "frugal_blockwise": lambda ps: FRUGAL(ps, lr=1e-2, density=0.5, update_proj_gap=5, projection="blockwise"),
    "badam": lambda ps: BAdam(ps, lr=5e-2, switch_block_every=3, switch_mode="random"),
    "gradnorm_lorp": lambda ps: GradNormLoRP(ps, lr=1e-2, rank=4, update_proj_gap=5),
    # svd="lowrank": the randomized SVD draws from the optimizer's generator, saved in state_dict
    "galore_lowrank": lambda ps: GaLore(ps, lr=1e-2, rank=4, update_proj_gap=5, svd="lowrank"),
    "fira_lowrank": lambda ps: Fira(ps, lr=1e-2, rank=4, update_proj_gap=5, svd="lowrank"),
    "frugal_lowrank": lambda ps: FRUGAL(ps, lr=1e-2, density=0.25, update_proj_gap=5, svd="lowrank"),
    "gradnorm_lorp_lowrank": lambda ps: GradNormLoRP(ps, lr=1e-2, rank=4, update_proj_gap=5, svd="lowrank"),
}


# ---------------------------------------------------------------- GaLore
def test_galore_worked_example_diag_gradient():
    # Prepare: G = diag(3, 1), r = 1, t = 1 (spec worked case): R = [[3], [0]]
    w = nn.Parameter(torch.zeros(2, 2, dtype=D64))
    opt = GaLore([w], lr=0.1, rank=1)
    w.grad = torch.diag(torch.tensor([3.0, 1.0], dtype=D64))
    # Execute
    opt.step()
    # Assert: N = 0.1*3 / (sqrt(0.001*9) + 1e-6), factor sqrt(1-0.999)/(1-0.9)
    expected = -0.1 * (0.3 / (math.sqrt(0.009) + 1e-6)) * math.sqrt(0.001) / 0.1  # ~ -0.1 * 0.99999
    torch.testing.assert_close(w.detach(), torch.tensor([[expected, 0.0], [0.0, 0.0]], dtype=D64))


def test_galore_full_rank_refreshed_every_step_is_adam_in_the_rotated_basis():
    # GaLore(r = n, T = 1) == Adam on R_t = G_t P_t^T, lifted back with P_t (eps = 0: Form A == B)
    g = _gen(2)
    a, target = torch.randn(6, 4, generator=g, dtype=D64), torch.randn(6, 4, generator=g, dtype=D64)
    w = nn.Parameter(torch.randn(6, 4, generator=g, dtype=D64))
    opt = GaLore([w], lr=0.05, eps=0.0, rank=4, update_proj_gap=1)
    shadow = nn.Parameter(torch.zeros(6, 4, dtype=D64))
    ref = torch.optim.Adam([shadow], lr=0.05, eps=0.0)
    plain = w.detach().clone().requires_grad_(True)
    adam = torch.optim.Adam([plain], lr=0.05, eps=0.0)
    for _ in range(10):
        grad = (w.detach() - target) * a.abs() + 0.1 * w.detach() @ w.detach().T @ a  # any smooth field
        p_t = torch.linalg.svd(grad, full_matrices=False)[2]  # (4, 4): V^T, the projector
        before, shadow_before = w.detach().clone(), shadow.detach().clone()
        w.grad = grad.clone()
        opt.step()
        shadow.grad = grad @ p_t.T
        ref.step()
        torch.testing.assert_close(w.detach() - before, (shadow.detach() - shadow_before) @ p_t,
                                   rtol=1e-9, atol=1e-12)
        plain.grad = (plain.detach() - target) * a.abs() + 0.1 * plain.detach() @ plain.detach().T @ a
        adam.step()
    assert not torch.allclose(w.detach(), plain.detach(), atol=1e-6)  # not plain Adam (rotated basis)


def test_galore_full_rank_path_is_adam_for_vectors_and_rank_none_groups():
    g = _gen(3)
    b = nn.Parameter(torch.randn(5, generator=g, dtype=D64))
    m = nn.Parameter(torch.randn(3, 4, generator=g, dtype=D64))
    opt = GaLore([{"params": [b]}, {"params": [m], "rank": None}], lr=0.01, eps=0.0)
    b_ref, m_ref = b.detach().clone().requires_grad_(True), m.detach().clone().requires_grad_(True)
    ref = torch.optim.Adam([b_ref, m_ref], lr=0.01, eps=0.0)
    for _ in range(5):
        gb, gm = torch.randn(5, generator=g, dtype=D64), torch.randn(3, 4, generator=g, dtype=D64)
        b.grad, m.grad, b_ref.grad, m_ref.grad = gb, gm, gb.clone(), gm.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(b.detach(), b_ref.detach())
    torch.testing.assert_close(m.detach(), m_ref.detach())
    assert "projector" not in opt.state[m]


def test_galore_refreshes_projector_at_calls_1_T_plus_1():
    g = _gen(4)
    w = nn.Parameter(torch.zeros(6, 4, dtype=D64))
    opt = GaLore([w], rank=2, update_proj_gap=3)
    changed = []
    previous = None
    for _ in range(7):
        w.grad = torch.randn(6, 4, generator=g, dtype=D64)
        opt.step()
        current = opt.state[w]["projector"]["right"].clone()
        changed.append(previous is None or not torch.equal(previous, current))
        previous = current
    assert changed == [True, False, False, True, False, False, True]


def test_galore_zero_gradient_is_finite_and_does_not_move():
    w = nn.Parameter(torch.ones(4, 3))
    opt = GaLore([w], rank=2)
    w.grad = torch.zeros(4, 3)
    opt.step()
    assert torch.equal(w.detach(), torch.ones(4, 3))


# ---------------------------------------------------------------- Fira
def test_fira_limiter_worked_cases():
    # prev = 1, ||S|| = 2: l = 2 / 1.01 (up to the 1e-8), S rescaled to norm ~1.01
    s = torch.tensor([2.0, 0.0], dtype=D64)
    limited, new_prev = norm_growth_limit(s, torch.tensor(1.0, dtype=D64), 1.01)
    assert float(limited.norm()) == pytest.approx(1.01, rel=1e-7)
    assert float(new_prev) == pytest.approx(1.01, rel=1e-7)
    same, _ = norm_growth_limit(torch.tensor([1.005, 0.0], dtype=D64), torch.tensor(1.0, dtype=D64), 1.01)
    assert torch.equal(same, torch.tensor([1.005, 0.0], dtype=D64))
    first, prev = norm_growth_limit(s, None, 1.01)
    assert torch.equal(first, s) and float(prev) == 2.0


def test_fira_equals_galore_when_the_residual_row_has_no_projected_gradient():
    # G = diag(3, 1), r = 1: phi = [.., 0] so the residual [[0, 0], [0, 1]] is discarded
    grads = torch.diag(torch.tensor([3.0, 1.0], dtype=D64))
    wf, wg = nn.Parameter(torch.zeros(2, 2, dtype=D64)), nn.Parameter(torch.zeros(2, 2, dtype=D64))
    fira, galore = Fira([wf], lr=0.1, rank=1), GaLore([wg], lr=0.1, rank=1)
    wf.grad, wg.grad = grads.clone(), grads.clone()
    fira.step()
    galore.step()
    torch.testing.assert_close(wf.detach(), wg.detach())


def test_fira_first_step_adds_the_norm_scaled_residual():
    # Prepare: one 6 x 4 weight, rank 1, t = 1 (the limiter only records)
    grad = torch.randn(6, 4, generator=_gen(5), dtype=D64)
    wf, wg = nn.Parameter(torch.zeros(6, 4, dtype=D64)), nn.Parameter(torch.zeros(6, 4, dtype=D64))
    fira, galore = Fira([wf], lr=0.1, rank=1), GaLore([wg], lr=0.1, rank=1)
    wf.grad, wg.grad = grad.clone(), grad.clone()
    # Execute
    fira.step()
    galore.step()
    # Assert: hand formula S = phi (G - R P), phi_i = |N_i| / |R_i|, N = 0.1 R / (sqrt(0.001) |R| + eps)
    p = torch.linalg.svd(grad)[2][:1]  # (1, 4)
    r = grad @ p.T  # (6, 1)
    n = 0.1 * r / (math.sqrt(0.001) * r.abs() + 1e-6)
    phi = n.abs() / (r.abs() + 1e-8)
    s = phi * (grad - r @ p)
    step_size = 0.1 * math.sqrt(0.001) / 0.1
    torch.testing.assert_close(wf.detach() - wg.detach(), -step_size * s)
    assert float(((wf.detach() - wg.detach()) @ p.T).abs().max()) < 1e-12  # outside the subspace


def test_fira_left_projection_scales_the_residual_per_column():
    # The docstring's choice: the scaling axis follows the projection side. A 4 x 6 weight is
    # projected from the left (P = U_r, R = P^T G, 1 x 6), so phi is one number per column.
    grad = torch.randn(4, 6, generator=_gen(7), dtype=D64)
    wf, wg = nn.Parameter(torch.zeros(4, 6, dtype=D64)), nn.Parameter(torch.zeros(4, 6, dtype=D64))
    fira, galore = Fira([wf], lr=0.1, rank=1), GaLore([wg], lr=0.1, rank=1)
    wf.grad, wg.grad = grad.clone(), grad.clone()
    fira.step()
    galore.step()
    p = torch.linalg.svd(grad)[0][:, :1]  # (4, 1)
    r = p.T @ grad  # (1, 6)
    n = 0.1 * r / (math.sqrt(0.001) * r.abs() + 1e-6)
    phi = n.abs() / (r.abs() + 1e-8)  # (1, 6): per column
    s = phi * (grad - p @ r)
    step_size = 0.1 * math.sqrt(0.001) / 0.1
    torch.testing.assert_close(wf.detach() - wg.detach(), -step_size * s)


def test_fira_limiter_caps_residual_growth_under_a_gradient_spike():
    g = _gen(6)
    base = torch.randn(6, 4, generator=g, dtype=D64)
    w = nn.Parameter(torch.zeros(6, 4, dtype=D64))
    opt = Fira([w], lr=1e-3, rank=1, update_proj_gap=100)
    norms = []
    for t in range(8):
        w.grad = base * (100.0 if t == 4 else 1.0) + 0.01 * torch.randn(6, 4, generator=g, dtype=D64)
        opt.step()
        norms.append(float(opt.state[w]["scaling_grad"]))
    ratios = [b / a for a, b in zip(norms, norms[1:])]
    assert max(ratios) <= 1.01 + 1e-9


# ---------------------------------------------------------------- FRUGAL
@pytest.mark.parametrize("reset, steps", [(True, 8), (False, 25)])
def test_frugal_blockwise_density_one_is_torch_adamw_bit_for_bit(reset, steps):
    data = _data(D64)
    m1, m2 = _mlp(0, D64), _mlp(0, D64)
    ours = FRUGAL(m1.parameters(), lr=1e-2, weight_decay=0.1, density=1.0, projection="blockwise",
                  update_proj_gap=10, reset_statistics=reset)
    ref = torch.optim.AdamW(m2.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    _train(m1, ours, steps, data)
    _train(m2, ref, steps, data)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_frugal_density_zero_is_decayed_sign_descent_on_weights():
    g = _gen(7)
    w = nn.Parameter(torch.randn(5, 4, generator=g, dtype=D64))
    start = w.detach().clone()
    grad = torch.randn(5, 4, generator=g, dtype=D64)
    opt = FRUGAL([w], lr=0.01, weight_decay=0.1, density=0.0)
    w.grad = grad
    opt.step()
    torch.testing.assert_close(w.detach(), start * (1 - 0.01 * 0.1) - 0.01 * grad.sign())


def test_frugal_svd_step_splits_adam_and_sgd_parts():
    # Prepare: density 0.5 on a 6 x 4 weight -> r = 2; state-free rule "sgd", scale 0.5
    grad = torch.randn(6, 4, generator=_gen(8), dtype=D64)
    w = nn.Parameter(torch.zeros(6, 4, dtype=D64))
    opt = FRUGAL([w], lr=0.1, weight_decay=0.0, density=0.5, state_free_rule="sgd", state_free_lr_scale=0.5)
    w.grad = grad
    # Execute
    opt.step()
    # Assert: first AdamW step on R is -lr R / (|R| + eps); the rest moves by -0.05 (G - R P)
    p = torch.linalg.svd(grad)[2][:2]
    r = grad @ p.T
    expected = (-0.1 * r / (r.abs() + 1e-8)) @ p - 0.05 * (grad - r @ p)
    torch.testing.assert_close(w.detach(), expected)


def test_frugal_full_rank_svd_has_no_state_free_part():
    grad = torch.randn(4, 3, generator=_gen(9), dtype=D64)
    w = nn.Parameter(torch.zeros(4, 3, dtype=D64))
    opt = FRUGAL([w], lr=0.1, weight_decay=0.0, density=1.0)
    w.grad = grad
    opt.step()
    p = torch.linalg.svd(grad)[2]
    r = grad @ p.T
    torch.testing.assert_close(w.detach(), (-0.1 * r / (r.abs() + 1e-8)) @ p)


def test_frugal_coordinates_leave_unselected_columns_to_sign_descent():
    grad = torch.randn(6, 8, generator=_gen(10), dtype=D64)
    w = nn.Parameter(torch.zeros(6, 8, dtype=D64))
    opt = FRUGAL([w], lr=0.1, weight_decay=0.0, density=0.25, projection="coordinates", proj_type="right")
    w.grad = grad
    opt.step()
    cols = opt.state[w]["projector"]["cols"].tolist()
    assert len(cols) == 2
    rest = [j for j in range(8) if j not in cols]
    torch.testing.assert_close(w.detach()[:, rest], -0.1 * grad[:, rest].sign())
    torch.testing.assert_close(w.detach()[:, cols], -0.1 * grad[:, cols] / (grad[:, cols].abs() + 1e-8))


@pytest.mark.parametrize("projection", ["svd", "random", "coordinates"])
def test_frugal_rounds_the_subspace_size_for_every_projection(projection):
    # The docstring's choice: r = round(rho * projected dim) everywhere (the fork floors for
    # coordinates). 6 x 5 weight, columns projected (m >= n), rho = 0.35: 1.75 -> r = 2, not 1.
    w = nn.Parameter(torch.zeros(6, 5, dtype=D64))
    opt = FRUGAL([w], density=0.35, projection=projection)
    w.grad = torch.randn(6, 5, generator=_gen(8), dtype=D64)
    opt.step()
    assert opt.state[w]["exp_avg"].shape == (6, 2)


def test_frugal_resets_subspace_statistics_at_refresh():
    g = _gen(11)
    w = nn.Parameter(torch.zeros(6, 4, dtype=D64))
    kept = FRUGAL([w], density=0.5, update_proj_gap=3)
    steps = []
    for _ in range(5):
        w.grad = torch.randn(6, 4, generator=g, dtype=D64)
        kept.step()
        steps.append(int(kept.state[w]["step"]))
    assert steps == [1, 2, 3, 1, 2]


def test_frugal_blockwise_keeps_state_only_for_active_blocks():
    model = _mlp(hidden=(16, 16, 16))  # 4 weight matrices
    opt = FRUGAL(model.parameters(), density=0.5, projection="blockwise", block_order="descending")
    _train(model, opt, 1, _data())
    weights = [p for p in model.parameters() if p.dim() == 2]
    with_state = [i for i, p in enumerate(weights) if len(opt.state.get(p, {})) > 0]
    assert with_state == [2, 3] and opt.schedule["active"] == [2, 3]


# ---------------------------------------------------------------- BAdam
def test_badam_descending_schedule_and_state_restart():
    # D = 4 blocks (one tensor each), K = 2: blocks 3, 3, 2, 2, 1, 1, 0, 0, 3, 3
    ws = [nn.Parameter(torch.zeros(3, dtype=D64)) for _ in range(4)]
    opt = BAdam(ws, lr=0.1, switch_block_every=2)
    trained, counters = [], []
    for _ in range(10):
        block = opt.active_block
        for w in ws:
            w.grad = torch.ones(3, dtype=D64)
        before = [w.detach().clone() for w in ws]
        opt.step()
        moved = [i for i, w in enumerate(ws) if not torch.equal(w.detach(), before[i])]
        assert moved == [block]
        trained.append(block)
        counters.append(int(opt.state[ws[block]]["step"]) if ws[block] in opt.state else 0)
    assert trained == [3, 3, 2, 2, 1, 1, 0, 0, 3, 3]
    assert counters == [1, 0] * 5  # 0: the state was cleared at the switch right after step 2


def test_badam_freezes_inactive_blocks():
    model = _mlp()
    opt = BAdam(module_blocks(model), switch_block_every=3)
    active = [p.requires_grad for p in model.parameters()]
    assert active == [False, False, False, False, True, True]  # last module first
    _train(model, opt, 3, _data())
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True, False, False]
    assert all(p.grad is None for p in list(model.parameters())[4:])


def test_badam_defaults_are_adams_and_inactive_blocks_get_no_decay():
    # Docstring choices: torch.optim.Adam's defaults; inactive blocks neither step nor decay
    ws = [nn.Parameter(torch.ones(3, dtype=D64)) for _ in range(3)]
    group = BAdam([nn.Parameter(torch.ones(3))]).param_groups[0]  # (freezing would touch ws)
    assert (group["lr"], group["eps"], group["weight_decay"]) == (1e-3, 1e-8, 0.0)
    opt = BAdam(ws, lr=0.1, weight_decay=0.5, switch_block_every=5, freeze_inactive=False)
    for w in ws:
        w.grad = torch.ones(3, dtype=D64)
    opt.step()
    assert all(torch.equal(w.detach(), torch.ones(3, dtype=D64)) for w in ws[:2])
    assert not torch.equal(ws[2].detach(), torch.ones(3, dtype=D64))  # the active (last) block


def test_badam_fixed_single_block_is_torch_adamw():
    data = torch.randn(5, generator=_gen(12), dtype=D64)
    w1 = nn.Parameter(torch.zeros(5, dtype=D64))
    w2 = nn.Parameter(torch.zeros(5, dtype=D64))
    ours = BAdam([w1], lr=0.05, weight_decay=0.1, switch_block_every=1, switch_mode="fixed")
    ref = torch.optim.AdamW([w2], lr=0.05, weight_decay=0.1, foreach=False)
    for _ in range(3):
        w1.grad, w2.grad = w1.detach() - data, w2.detach() - data
        ours.step()
        ref.step()
        # fixed mode with K = 1 restarts Adam after every step: each step is a first Adam step
        ref.state[w2].clear()
    assert torch.equal(w1, w2)


# ---------------------------------------------------------------- GradNormLoRP
def test_gradnorm_lorp_weight_norm_gradients_match_autograd():
    # Prepare: W = g v / ||v|| (rows), L = sum(C * W)
    g0 = _gen(13)
    w = torch.randn(5, 4, generator=g0, dtype=D64)
    c = torch.randn(5, 4, generator=g0, dtype=D64)
    # Execute: hand-written gradients at the unit anchor
    mag, v, grad_g, grad_v = weight_norm_grads(w, c)
    # Assert: autograd through the parameterization
    mag_a, v_a = mag.clone().requires_grad_(True), v.clone().requires_grad_(True)
    loss = (c * (mag_a * v_a / v_a.norm(dim=1, keepdim=True))).sum()
    loss.backward()
    torch.testing.assert_close(mag * v, w)
    torch.testing.assert_close(grad_g, mag_a.grad)
    torch.testing.assert_close(grad_v, v_a.grad)


def test_gradnorm_lorp_zero_gradient_leaves_the_weight_unchanged():
    w = nn.Parameter(torch.randn(5, 4, generator=_gen(14), dtype=D64))
    start = w.detach().clone()
    opt = GradNormLoRP([w], rank=2)
    w.grad = torch.zeros_like(w)
    opt.step()
    torch.testing.assert_close(w.detach(), start)


def test_gradnorm_lorp_radial_gradient_only_changes_row_norms():
    # G parallel to each row of W: the direction gradient is zero, only magnitudes move
    w = nn.Parameter(torch.randn(5, 4, generator=_gen(15), dtype=D64))
    start = w.detach().clone()
    opt = GradNormLoRP([w], lr=0.01, rank=2)
    w.grad = 2.0 * start
    opt.step()
    unit = lambda m: m / m.norm(dim=1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(unit(w.detach()), unit(start))
    assert torch.all(w.detach().norm(dim=1) < start.norm(dim=1))


def test_gradnorm_lorp_magnitude_is_signed_a_row_can_flip():
    # The docstring's choice: g is a signed scalar (not clamped at 0). Row 0 is short (norm 1e-3)
    # and its gradient is radial and positive, so the magnitude's first Adam step (~ lr = 0.01)
    # carries g through 0: the row comes out pointing the other way, with norm ~ 0.009.
    start = torch.tensor([[1e-3, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=D64)
    w = nn.Parameter(start.clone())
    opt = GradNormLoRP([w], lr=0.01, rank=1)
    w.grad = torch.zeros_like(start)
    w.grad[0, 0] = 1.0
    opt.step()
    assert float(w.detach()[0, 0]) == pytest.approx(1e-3 - 0.01, rel=1e-4)
    torch.testing.assert_close(w.detach()[0, 1:], torch.zeros(2, dtype=D64))


def test_gradnorm_lorp_norm_dim_zero_is_the_transposed_problem():
    # norm_dim=0 (one magnitude per column) on W is norm_dim=1 on W^T, step for step
    w0 = torch.randn(6, 4, generator=_gen(16), dtype=D64)
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.T.clone())
    opt_a = GradNormLoRP([a], lr=0.01, rank=4, norm_dim=0)
    opt_b = GradNormLoRP([b], lr=0.01, rank=4, norm_dim=1)
    gen = _gen(17)
    for _ in range(3):
        g = torch.randn(6, 4, generator=gen, dtype=D64)
        a.grad, b.grad = g.clone(), g.T.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a.detach(), b.detach().T, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- the papers' claimed effect
def _least_squares(make, seed=0, steps=100):
    """Fit a full-rank 16 x 16 map: a low-rank update cannot get there within a projector window."""
    g = _gen(seed)
    target = torch.randn(16, 16, generator=g, dtype=D64)
    x = torch.randn(16, 128, generator=g, dtype=D64)
    w = nn.Parameter(torch.zeros(16, 16, dtype=D64))
    opt = make([w])
    for _ in range(steps):
        opt.zero_grad()
        loss = ((w @ x - target @ x) ** 2).mean()
        loss.backward()
        opt.step()
    return float(((w.detach() @ x - target @ x) ** 2).mean())


def test_full_rank_updates_beat_galore_at_the_same_state_size():
    # Fira and FRUGAL keep Adam state for r = 2 directions like GaLore but also move the rest
    galore = _least_squares(lambda ps: GaLore(ps, lr=0.05, rank=2, update_proj_gap=10))
    fira = _least_squares(lambda ps: Fira(ps, lr=0.05, rank=2, update_proj_gap=10))
    frugal = _least_squares(lambda ps: FRUGAL(ps, lr=0.05, weight_decay=0.0, density=2 / 16, update_proj_gap=10,
                                              state_free_lr_scale=0.2))
    frugal_none = _least_squares(lambda ps: FRUGAL(ps, lr=0.05, weight_decay=0.0, density=2 / 16,
                                                   update_proj_gap=10, state_free_rule="none"))
    start = _least_squares(lambda ps: GaLore(ps), steps=0)
    assert galore < 0.6 * start  # GaLore's own rank-2 update does make progress (16.1 -> 7.3) ...
    assert fira < 0.5 * galore and frugal < 0.5 * galore  # ... the full-rank ones far more
    assert frugal < 0.5 * frugal_none  # dropping the state-free part loses the gain


# ---------------------------------------------------------------- all methods
@pytest.mark.parametrize("name", list(METHODS))
def test_loss_falls_on_a_small_network(name):
    model = _mlp()
    losses = _train(model, METHODS[name](model.parameters()), 40, _data())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("name", list(METHODS))
def test_state_dict_round_trip_continues_bit_identically(name):
    data = _data()
    model = _mlp()
    opt = METHODS[name](model.parameters())
    _train(model, opt, 7, data)  # mid-window: projectors, moments, blocks and RNG all in use
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 9, data)
    clone = _mlp(seed=99)
    clone.load_state_dict(saved_model)
    restored = METHODS[name](clone.parameters())
    restored.load_state_dict(saved_opt)
    _train(clone, restored, 9, data)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["galore_lowrank", "fira_lowrank", "frugal_lowrank", "gradnorm_lorp_lowrank"])
def test_lowrank_svd_draws_from_the_optimizers_seed_not_the_global_rng(name):
    # The docstrings' choice: svd="lowrank" uses the optimizer's generator (seed), so the global
    # RNG does not change the run and the seed does (the 16 x 16 layer is truly randomized).
    def run(seed, global_seed):
        model = _mlp()
        opt = METHODS[name](model.parameters())
        opt.generator.manual_seed(seed)
        torch.manual_seed(global_seed)
        _train(model, opt, 6, _data())
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    base = run(0, 0)
    assert torch.equal(base, run(0, 123))
    assert not torch.equal(base, run(1, 0))


@pytest.mark.parametrize("name", ["galore", "fira", "gradnorm_lorp", "frugal", "badam"])
def test_registered_and_constructible_by_name(name):
    # the registry's defaults give a working optimizer: its first step moves against the gradient
    w = nn.Parameter(torch.randn(4, 3, generator=_gen(30)))
    start = w.detach().clone()
    opt = make("optimizer", name, [w], weight_decay=0.0)
    w.grad = torch.randn(4, 3, generator=_gen(31))
    opt.step()
    move = w.detach() - start
    assert float((move * w.grad).sum()) < 0 and type(opt).__name__.lower().startswith(name[:4])
    assert opt.state[w]  # state was created


@pytest.mark.parametrize("cls", [GaLore, Fira, GradNormLoRP])
@pytest.mark.parametrize("kwargs, name, exc", [
    (dict(rank=0), "rank", ValueError), (dict(rank=-3), "rank", ValueError),
    (dict(rank=2.5), "rank", TypeError), (dict(update_proj_gap=0), "update_proj_gap", ValueError),
    (dict(scale=-1.0), "scale", ValueError), (dict(lr=-1.0), "lr", ValueError),
    (dict(proj_type="diagonal"), "proj_type", ValueError), (dict(betas=(0.9, 1.0)), "betas", ValueError),
])
def test_projected_optimizers_reject_bad_arguments(cls, kwargs, name, exc):
    with pytest.raises(exc, match=name):
        cls([nn.Parameter(torch.ones(3, 2))], **kwargs)


def test_group_override_is_validated():
    with pytest.raises(ValueError, match="rank"):
        GaLore([{"params": [nn.Parameter(torch.ones(3, 2))], "rank": 0}])


@pytest.mark.parametrize("kwargs, name", [
    (dict(density=1.5), "density"), (dict(density=-0.1), "density"), (dict(projection="pca"), "projection"),
    (dict(state_free_rule="adam"), "state_free_rule"), (dict(update_proj_gap=0), "update_proj_gap"),
    (dict(proj_type="full"), "proj_type"), (dict(block_order="zigzag"), "block_order"),
    (dict(projection="blockwise", density=None), "density"),
])
def test_frugal_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FRUGAL([nn.Parameter(torch.ones(3, 2))], **kwargs)


@pytest.mark.parametrize("kwargs, name, exc", [
    (dict(switch_block_every=0), "switch_block_every", ValueError),
    (dict(switch_mode="zigzag"), "switch_mode", ValueError),
    (dict(start_block=5), "start_block", ValueError),
    (dict(freeze_inactive=1), "freeze_inactive", TypeError),
])
def test_badam_rejects_bad_arguments(kwargs, name, exc):
    with pytest.raises(exc, match=name):
        BAdam([nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))], **kwargs)


def test_fira_rejects_gamma_below_one_and_two_sided_projection():
    with pytest.raises(ValueError, match="gamma"):
        Fira([nn.Parameter(torch.ones(3, 2))], gamma=0.5)
    with pytest.raises(ValueError, match="proj_type"):
        Fira([nn.Parameter(torch.ones(3, 2))], proj_type="full")


@pytest.mark.parametrize("name", ["galore", "fira", "gradnorm_lorp", "frugal", "badam"])
def test_sparse_gradients_raise(name):
    emb = nn.Embedding(5, 3, sparse=True)
    opt = make("optimizer", name, emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(SparseGradientError):
        opt.step()


def test_params_without_gradients_are_skipped():
    a, b = nn.Parameter(torch.ones(4, 3)), nn.Parameter(torch.ones(4, 3))
    for cls in (GaLore, Fira, GradNormLoRP, FRUGAL):
        opt = cls([a, b])
        a.grad, b.grad = torch.ones(4, 3), None
        opt.step()
        assert b not in opt.state or len(opt.state[b]) == 0
        assert torch.equal(b.detach(), torch.ones(4, 3))


def _gpt2_losses(make_opt, steps=12):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_opt(model)
    ids = torch.randint(0, 64, (4, 16), generator=_gen(20))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), start[n])}
    return losses, moved, {n for n, p in model.named_parameters() if p.dim() == 2}


@pytest.fixture(scope="module")
def vectors_only_loss():
    """The final loss when only the biases and norms train (AdamW): what a method whose matrix
    update did nothing would reach (4.18 -> 4.07 in 12 steps)."""
    losses, _, _ = _gpt2_losses(lambda m: torch.optim.AdamW([p for p in m.parameters() if p.dim() < 2],
                                                              lr=1e-2, weight_decay=0.0))
    return losses[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["galore", "fira", "frugal", "badam", "gradnorm_lorp"])
def test_trains_a_hugging_face_model(name, vectors_only_loss):
    if name == "badam":
        make_opt = lambda m: make("optimizer", name, module_blocks(m), lr=1e-2, switch_block_every=2)  # noqa: E731
    else:
        make_opt = lambda m: make("optimizer", name, m.parameters(), lr=1e-2)  # noqa: E731
    losses, moved, matrices = _gpt2_losses(make_opt)
    assert all(math.isfinite(v) for v in losses)
    # the weight matrices carry the learning: well below what the vectors alone reach
    assert losses[-1] < vectors_only_loss - 0.1, (losses[-1], vectors_only_loss)
    if name != "badam":  # BAdam trains 6 of its blocks in 12 steps
        assert matrices <= moved
