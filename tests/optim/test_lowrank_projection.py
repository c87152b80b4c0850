"""The shared low-rank projector and block schedule (lab.optim.projection), tested once here."""
import pytest
import torch

from lab.optim import projection as P


def _grad(m, n, seed=0, dtype=torch.float64):
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape, proj_type, expected", [
    ((6, 4), "std", "right"), ((4, 6), "std", "left"), ((5, 5), "std", "right"),
    ((6, 4), "reverse_std", "left"), ((4, 6), "reverse_std", "right"),
    ((6, 4), "left", "left"), ((6, 4), "right", "right"), ((6, 4), "full", "both"),
])
def test_side_follows_galore_rule(shape, proj_type, expected):
    assert P.side(shape, proj_type) == expected


def test_svd_projector_is_the_best_rank_r_approximation():
    # Prepare: a 7 x 5 gradient and its singular values
    g = _grad(7, 5)
    s = torch.linalg.svdvals(g)
    # Execute
    proj = P.compute(g, 2, method="svd")
    low = P.project(g, proj)
    back = P.project_back(low, proj, g.shape)
    # Assert: right side (m >= n), orthonormal rows, Eckart-Young energy and error
    assert set(proj) == {"right"} and proj["right"].shape == (2, 5) and low.shape == (7, 2)
    torch.testing.assert_close(proj["right"] @ proj["right"].T, torch.eye(2, dtype=g.dtype))
    assert P.energy(g, proj) == pytest.approx(float((s[:2] ** 2).sum()), rel=1e-10)
    assert float((g - back).pow(2).sum()) == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-10)


@pytest.mark.parametrize("method", ["svd", "random", "coordinates"])
@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_full_rank_round_trip_is_identity(method, shape):
    g = _grad(*shape, seed=1)
    proj = P.compute(g, 10, method=method, generator=torch.Generator().manual_seed(0))  # rank clamped
    assert P.rank_of(proj) == min(shape)
    torch.testing.assert_close(P.project_back(P.project(g, proj), proj, g.shape), g)


def test_two_sided_projection_shapes_and_identity_at_full_rank():
    g = _grad(5, 3)
    proj = P.compute(g, 2, proj_type="full")
    assert P.project(g, proj).shape == (2, 2)
    full = P.compute(g, 3, proj_type="full")
    torch.testing.assert_close(P.project_back(P.project(g, full), full, g.shape), g)


def test_coordinates_pick_columns_and_scatter_back():
    # Prepare: a gradient whose entries name their column
    g = torch.arange(3.0).repeat(5, 1) + 10 * torch.arange(5.0)[:, None]  # (5, 3), g[i, j] = 10 i + j
    proj = P.compute(g, 2, method="coordinates", generator=torch.Generator().manual_seed(3))
    idx = proj["cols"]
    # Assert: sorted, distinct, int64; project = gather; lift = scatter into zeros
    assert idx.dtype == torch.int64 and idx.tolist() == sorted(set(idx.tolist())) and len(idx) == 2
    torch.testing.assert_close(P.project(g, proj), g[:, idx])
    back = P.project_back(P.project(g, proj), proj, g.shape)
    missing = [j for j in range(3) if j not in idx.tolist()]
    assert torch.equal(back[:, idx], g[:, idx]) and torch.all(back[:, missing] == 0)


def test_random_projection_is_orthonormal_and_reproducible():
    g = _grad(8, 6)
    a = P.compute(g, 3, method="random", generator=torch.Generator().manual_seed(5))
    b = P.compute(g, 3, method="random", generator=torch.Generator().manual_seed(5))
    c = P.compute(g, 3, method="random", generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a["right"] @ a["right"].T, torch.eye(3, dtype=g.dtype))
    assert torch.equal(a["right"], b["right"]) and not torch.allclose(a["right"], c["right"])


def test_rank_zero_gives_an_empty_subspace():
    g = _grad(4, 3)
    proj = P.compute(g, 0)
    assert P.project(g, proj).shape == (4, 0)
    assert torch.all(P.project_back(P.project(g, proj), proj, g.shape) == 0)


def test_half_precision_gradient_keeps_its_dtype():
    g = _grad(6, 4, dtype=torch.float32).to(torch.bfloat16)
    proj = P.compute(g, 2)
    assert proj["right"].dtype == torch.bfloat16 and torch.isfinite(P.project(g, proj).float()).all()


@pytest.mark.parametrize("kwargs, name, exc", [
    (dict(rank=-1), "rank", ValueError), (dict(rank=1.5), "rank", TypeError),
    (dict(rank=2, method="qr"), "method", ValueError),
    (dict(rank=2, proj_type="diag"), "proj_type", ValueError),
    (dict(rank=2, method="random", proj_type="full"), "full", ValueError),
])
def test_compute_rejects_bad_arguments(kwargs, name, exc):
    with pytest.raises(exc, match=name):
        P.compute(_grad(4, 3), **kwargs)


def test_compute_rejects_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        P.compute(torch.ones(3), 1)


def test_descending_block_schedule_matches_badam_worked_case():
    # D = 4, descending from block 3: 3 -> 2 -> 1 -> 0 -> 3
    order, current = [], 3
    for _ in range(5):
        (current,), _ = P.next_blocks(current, 4, "descending")
        order.append(current)
    assert order == [2, 1, 0, 3, 2]
    assert P.next_blocks(3, 4, "ascending")[0] == [0]
    assert P.next_blocks(2, 4, "fixed")[0] == [2]
    assert P.next_blocks(0, 4, "ascending", count=2)[0] == [1, 2]


def test_random_block_order_visits_every_block_once_per_pass():
    gen, queue, seen = torch.Generator().manual_seed(0), [], []
    for _ in range(10):
        (block,), queue = P.next_blocks(0, 5, "random", queue=queue, generator=gen)
        seen.append(block)
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:]) == list(range(5))


def test_captured_energy_is_one_for_full_rank_optimizers():
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([w])
    w.grad = torch.ones_like(w)
    assert P.captured_energy(opt) == 1.0


@pytest.mark.parametrize("spectrum", ["fast", "slow", "flat"])
def test_randomized_svd_captures_nearly_the_exact_energy(spectrum):
    # Prepare: a 256 x 128 gradient with singular values k^-1, k^-1/2 or all equal; rank 16
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(256, 128, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(128, 128, generator=gen, dtype=torch.float64))
    k = torch.arange(1, 129, dtype=torch.float64)
    s = {"fast": 1 / k, "slow": k ** -0.5, "flat": torch.ones(128, dtype=torch.float64)}[spectrum]
    grad = u @ torch.diag(s) @ v.T
    # Execute
    exact = P.energy(grad, P.compute(grad, 16))
    randomized = P.energy(grad, P.compute(grad, 16, svd="lowrank", generator=torch.Generator().manual_seed(1)))
    # Assert: the exact top-16 subspace is optimal (Eckart-Young), the randomized one within 1 %
    # (2 power iterations, 8 extra columns); the exact energy is the top-16 sum of s^2
    assert exact == pytest.approx(float((s[:16] ** 2).sum()), rel=1e-10)
    assert 0.99 * exact <= randomized <= exact * (1 + 1e-12)


def test_randomized_svd_is_reproducible_from_the_generator():
    grad = torch.randn(40, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = P.compute(grad, 4, svd="lowrank", generator=torch.Generator().manual_seed(3))
    b = P.compute(grad, 4, svd="lowrank", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["right"], b["right"])
    torch.testing.assert_close(a["right"] @ a["right"].T, torch.eye(4, dtype=torch.float64))
