"""ES and EGGROLL: shaping, hand-checked steps, unbiasedness, variance, the O(1/r) gap, errors."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lab.experiments import run
from lab.optim.eggroll import EGGROLL
from lab.optim.es import ES, LowRankBatch, centered_ranks, population_call, zscore
from lab.registry import make


# ---- shaping -----------------------------------------------------------------------------------
def test_centered_ranks_spec_example():
    # returns [1, 5, 3, 2] -> ranks [0, 3, 2, 1] -> [-0.5, 0.5, 0.1667, -0.1667]
    out = centered_ranks(torch.tensor([1.0, 5.0, 3.0, 2.0]))
    torch.testing.assert_close(out, torch.tensor([-0.5, 0.5, 1 / 6, -1 / 6], dtype=torch.float64))


def test_zscore_spec_example():
    out = zscore(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(out, torch.tensor([-1.3416, -0.4472, 0.4472, 1.3416], dtype=torch.float64),
                               atol=1e-4, rtol=0)


def test_centered_ranks_are_invariant_to_monotone_transforms():
    f = torch.randn(10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(centered_ranks(f), centered_ranks(torch.exp(3 * f) - 7))


def test_centered_rank_ties_are_broken_by_position():
    # ES's choice (stable argsort): equal values get increasing ranks in order of appearance
    out = centered_ranks(torch.tensor([2.0, 1.0, 2.0, 2.0]))
    torch.testing.assert_close(out, torch.tensor([-1 / 6, -0.5, 1 / 6, 0.5], dtype=torch.float64))


# ---- hand-checked steps ------------------------------------------------------------------------
def test_es_step_by_hand():
    # Prepare: N = 4 (two antithetic pairs), sigma 0.5, plain SGD lr 1 without decay
    theta = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = ES([theta], torch.optim.SGD, lr=1.0, sigma=0.5, population=4, weight_decay=0.0, seed=7)
    start = theta.detach().clone()
    seen = {}

    def fitness(batch):
        seen["batch"] = batch[0].clone()
        return torch.tensor([1.0, 5.0, 3.0, 2.0])

    # Execute
    opt.step(fitness)
    # Assert: the same noise regenerated from the seed; members theta +- sigma eps_k
    eps = torch.randn((2, 3), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    members = torch.stack([start + 0.5 * eps[0], start - 0.5 * eps[0], start + 0.5 * eps[1], start - 0.5 * eps[1]])
    torch.testing.assert_close(seen["batch"], members)
    w = torch.tensor([-0.5, 0.5, 1 / 6, -1 / 6], dtype=torch.float64)  # centered ranks
    g_hat = ((w[0] - w[1]) * eps[0] + (w[2] - w[3]) * eps[1]) / 4  # no 1/sigma
    torch.testing.assert_close(theta.detach(), start + g_hat)


def test_eggroll_step_by_hand():
    # Prepare: one 2x3 matrix, N = 2 (one pair), rank 2, sigma 0.1, SGD lr 1
    W = torch.tensor([[0.1, 0.2, 0.3], [-0.1, 0.0, 0.4]], dtype=torch.float64, requires_grad=True)
    opt = EGGROLL([W], lr=1.0, sigma=0.1, rank=2, population=2, seed=5)
    start = W.detach().clone()
    seen = {}

    def fitness(batch):
        seen["entry"], seen["members"] = batch[0], batch[0].materialize()
        return torch.tensor([3.0, 1.0])

    # Execute
    opt.step(fitness)
    # Assert: factors [A; B] ~ N(0, 1)^((out + in) x r) from the seed; E = A B^T / sqrt(r)
    factors = torch.randn((1, 5, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    A, B = factors[0, :2], factors[0, 2:]
    E = A @ B.T / math.sqrt(2)
    entry = seen["entry"]
    assert isinstance(entry, LowRankBatch) and entry.A.shape == (2, 2, 2) and entry.B.shape == (2, 3, 2)
    torch.testing.assert_close(seen["members"], torch.stack([start + 0.1 * E, start - 0.1 * E]))
    f_tilde = torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(1 + 1e-5)  # z-scores
    # g_hat = sqrt(N) * mean_i(f~_i s_i sigma E) = sqrt(2) * (f~_0 - f~_1) * 0.1 * E / 2
    g_hat = math.sqrt(2) * (f_tilde[0] - f_tilde[1]) * 0.1 * E / 2
    torch.testing.assert_close(W.detach(), start + g_hat)


def test_equal_fitness_gives_no_update():
    # Prepare: z-score shaping of a constant is zero
    W = torch.randn(3, 4, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64).requires_grad_(True)
    before = [W.detach().clone(), b.detach().clone()]
    opt = EGGROLL([W, b], lr=1.0, sigma=0.1, rank=2, population=8)
    # Execute
    opt.step(lambda batch: torch.full((8,), 5.0))
    # Assert
    assert torch.equal(W.detach(), before[0]) and torch.equal(b.detach(), before[1])


# ---- estimator properties ------------------------------------------------------------------------
def _quadratic():
    g = torch.Generator().manual_seed(3)
    M = torch.randn(5, 5, generator=g, dtype=torch.float64)
    A = M @ M.T / 5 + torch.eye(5, dtype=torch.float64)
    c = torch.randn(5, generator=g, dtype=torch.float64)

    def fitness(batch):  # F(theta) = -1/2 (theta - c)^T A (theta - c), per member
        d = batch[0] - c  # (N, 5)
        return -0.5 * torch.einsum("ni,ij,nj->n", d, A, d)

    return A, c, fitness


def _estimates(population, repeats, sigma=0.1, seed=0):
    A, c, fitness = _quadratic()
    theta = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = ES([theta], sigma=sigma, population=population, fitness_shaping="none", seed=seed)
    est = torch.stack([opt.estimate(fitness)[0][0] for _ in range(repeats)])  # (R, 5)
    true = -A @ (theta.detach() - c)  # grad F(theta)
    return est, true


def test_es_estimate_is_unbiased_on_a_quadratic():
    # Prepare / Execute: raw fitness, antithetic; E[g_hat] = sigma grad F for a quadratic
    sigma = 0.1
    est, true = _estimates(population=16, repeats=600, sigma=sigma)
    mean, se = est.mean(0) / sigma, est.std(0) / sigma / math.sqrt(est.shape[0])
    # Assert: within 5 standard errors in every coordinate
    assert ((mean - true).abs() < 5 * se).all(), (mean, true, se)


def test_es_estimate_variance_falls_like_one_over_population():
    # Prepare / Execute: total variance of g_hat at N = 8, 32, 128
    scaled = []
    for n in (8, 32, 128):
        est, _ = _estimates(population=n, repeats=300, seed=n)
        scaled.append(est.var(0).sum().item() * n)
    # Assert: N * Var is flat (within Monte-Carlo error)
    assert max(scaled) / min(scaled) < 1.35, scaled


def _cubic_mean_entry(opt, matrix):
    """Mean entry of g_hat for F(W) = sum W_ij^3 at W = 0 (only the 4th moment of the noise survives)."""
    def fitness(batch):
        entry = batch[0]
        members = entry.materialize() if isinstance(entry, LowRankBatch) else entry
        return (members ** 3).sum(dim=(1, 2))

    (direction,), _ = opt.estimate(fitness)
    return direction.mean().item()


def test_eggroll_update_approaches_full_rank_es_like_one_over_rank():
    # Prepare: for this F, E[g_hat_ES] = 3 sigma^3 per entry and
    # E[g_hat_EGGROLL] = sigma^4 sqrt(N) (3 + 6/r) (the kurtosis of A B^T / sqrt(r) is 3 + 6/r)
    sigma, n = 0.5, 8000
    W = torch.zeros(8, 8, dtype=torch.float64, requires_grad=True)
    # full-rank ES with 4x the population: the standard error of `full` is 0.071 at N = 8000
    # (measured over 20 seeds) and falls like 1/sqrt(N), so 0.036 here; the bound is 4 of those
    es = ES([W], sigma=sigma, population=4 * n, fitness_shaping="none", seed=1)
    full = _cubic_mean_entry(es, W) / sigma ** 3
    gaps = {}
    for r in (1, 2, 4, 8):
        egg = EGGROLL([W], sigma=sigma, rank=r, population=n, fitness_shaping="none", seed=r)
        # Execute
        gaps[r] = _cubic_mean_entry(egg, W) / (sigma ** 4 * math.sqrt(n)) - full
    # Assert: full-rank ES matches its theory; the gap shrinks like 6 / r
    assert full == pytest.approx(3.0, abs=4 * 0.036)
    assert gaps[1] > gaps[2] > gaps[4] > gaps[8] > 0
    for r, gap in gaps.items():
        assert 3.5 < gap * r < 8.5, gaps


# ---- the population forward --------------------------------------------------------------------------
def test_low_rank_forward_matches_the_materialized_forward_without_materializing(monkeypatch):
    # Prepare: an MLP; forbid materialize() while the low-rank forward runs
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(10, 6)
    opt = EGGROLL(model.parameters(), sigma=0.1, rank=2, population=6)
    outputs = {}

    def fitness(batch):
        materialized = [e.materialize() if isinstance(e, LowRankBatch) else e for e in batch]
        with monkeypatch.context() as m:
            m.setattr(LowRankBatch, "materialize", lambda self: pytest.fail("materialized"))
            outputs["lowrank"] = population_call(model, opt.params, batch, x)
        outputs["full"] = population_call(model, opt.params, materialized, x)
        return outputs["lowrank"].sum(dim=(1, 2))

    # Execute
    opt.step(fitness)
    # Assert
    assert outputs["lowrank"].shape == (6, 10, 3)
    torch.testing.assert_close(outputs["lowrank"], outputs["full"], atol=1e-5, rtol=1e-5)


def test_population_call_with_per_member_inputs():
    # Prepare: a linear layer, one input row per member
    layer = nn.Linear(4, 2)
    opt = ES(layer.parameters(), population=4)
    obs = torch.randn(4, 4)
    seen = {}

    def fitness(batch):
        seen["out"] = population_call(layer, opt.params, batch, obs, batched_inputs=True)
        seen["batch"] = batch
        return seen["out"][:, 0]

    # Execute
    opt.step(fitness)
    # Assert: member i applies its own weights to its own input
    W, b = seen["batch"]
    expected = torch.einsum("ni,noi->no", obs, W) + b
    torch.testing.assert_close(seen["out"], expected)


@pytest.mark.parametrize("optimizer", ["es", "eggroll"])
def test_loss_falls_on_a_small_network(optimizer):
    # Prepare / Execute: fit a teacher MLP without gradients
    h = run("es_regression", optimizer=optimizer, steps=60)
    # Assert
    assert h["loss"][-1] < 0.4 * h["loss"][0]


def test_cartpole_and_rank_sweep_experiments_run():
    # Prepare / Execute: short runs
    cart = run("es_cartpole", optimizer="eggroll", generations=2, population=8, max_steps=30)
    sweep = run("es_rank_sweep", ranks=(1, 4), repeats=2, population=16)
    # Assert
    assert len(cart["reward"]) == 2 and np.all((cart["reward"] >= 1) & (cart["reward"] <= 30))
    assert list(sweep.steps) == [1, 4] and {"cosine", "rel_variance", "wall_time"} <= set(sweep.artifacts["es"])


# ---- state and errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ES, EGGROLL])
def test_state_dict_round_trips_the_rng_state(cls):
    # Prepare: 3 steps, save, 3 more; then a fresh optimizer from the saved state
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    opt = cls(model.parameters(), lr=0.05, sigma=0.1, population=8, seed=3)

    def fitness_of(m, o):
        return lambda batch: -((population_call(m, o.params, batch, x) - y) ** 2).mean(dim=(1, 2))

    for _ in range(3):
        opt.step(fitness_of(model, opt))
    saved_params, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert "rng_state" in saved_state
    for _ in range(3):
        opt.step(fitness_of(model, opt))
    # Execute
    clone = nn.Linear(3, 2)
    clone.load_state_dict(saved_params)
    fresh = cls(clone.parameters(), lr=0.05, sigma=0.1, population=8, seed=99)
    fresh.load_state_dict(saved_state)
    for _ in range(3):
        fresh.step(fitness_of(clone, fresh))
    # Assert
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"rank": 0}, ValueError, "rank"),
    ({"rank": -2}, ValueError, "rank"),
    ({"rank": 1.5}, TypeError, "rank"),
    ({"rank": True}, TypeError, "rank"),
    ({"population": 7}, ValueError, "population"),
    ({"population": 1}, ValueError, "population"),
    ({"sigma": 0.0}, ValueError, "sigma"),
    ({"fitness_shaping": "softmax"}, ValueError, "fitness_shaping"),
])
def test_bad_eggroll_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        EGGROLL([torch.zeros(2, 2, requires_grad=True)], **kwargs)


def test_bad_rank_in_a_param_group():
    with pytest.raises(ValueError, match="rank"):
        EGGROLL([{"params": [torch.zeros(2, 2, requires_grad=True)], "rank": 0}])


def test_es_allows_odd_population_without_antithetic_pairs():
    theta = torch.zeros(3, requires_grad=True)
    opt = ES([theta], population=5, antithetic=False)
    values = opt.step(lambda batch: -(batch[0] ** 2).sum(1))
    assert values.shape == (5,)


@pytest.mark.parametrize("fitness, error, match", [
    (lambda batch: torch.zeros(3), ValueError, "fitness"),
    (lambda batch: torch.full((4,), float("nan")), ValueError, "NaN"),
    (lambda batch: "good", TypeError, "fitness"),
    ("not callable", TypeError, "fitness"),
])
def test_bad_fitness(fitness, error, match):
    opt = ES([torch.zeros(2, requires_grad=True)], population=4)
    with pytest.raises(error, match=match):
        opt.step(fitness)


def test_registry_builds_both():
    p = torch.zeros(2, 2, requires_grad=True)
    assert isinstance(make("optimizer", "es(sigma=0.1)", [p]), ES)
    egg = make("optimizer", "eggroll(rank=2)", [p], lr=0.1)
    assert isinstance(egg, EGGROLL) and egg.param_groups[0]["rank"] == 2 and egg.requires_fitness


def test_documented_defaults():
    # ES: the reference humanoid config (sigma 0.02, Adam lr 0.01, l2 0.005, centered ranks,
    # antithetic) with population 64; EGGROLL: sigma 1e-3, rank 1, z-scores, SGD with lr 1e-3.
    p = torch.zeros(2, 2, requires_grad=True)
    es = ES([p])
    assert isinstance(es.base_optimizer, torch.optim.Adam) and es.population == 64 and es.antithetic
    assert es.param_groups[0]["sigma"] == 0.02 and es.fitness_shaping == "centered_rank"
    assert es.param_groups[0]["lr"] == 0.01 and es.param_groups[0]["weight_decay"] == 0.005
    egg = EGGROLL([p])
    assert isinstance(egg.base_optimizer, torch.optim.SGD) and egg.population == 64
    assert egg.param_groups[0]["sigma"] == 1e-3 and egg.param_groups[0]["rank"] == 1
    assert egg.param_groups[0]["lr"] == 1e-3 and egg.fitness_shaping == "zscore"


@pytest.mark.parametrize("cls", [ES, EGGROLL])
def test_step_leaves_minus_g_hat_in_grad(cls):
    # The documented contract: step writes -g_hat (g_hat = the ascent estimate) into p.grad, kept
    # there for inspection, and B steps on it. A twin with the same seed gives g_hat by estimate().
    def fitness(batch):
        members = batch[0].materialize() if isinstance(batch[0], LowRankBatch) else batch[0]
        return -(members - 1).pow(2).sum((1, 2))

    theta, twin = (torch.zeros(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    opt = cls([theta], torch.optim.SGD([theta], lr=0.5), population=4, seed=1)
    g_hat = cls([twin], torch.optim.SGD([twin], lr=0.5), population=4, seed=1).estimate(fitness)[0][0]
    opt.step(fitness)
    assert g_hat.abs().sum() > 0
    torch.testing.assert_close(theta.grad, -g_hat, rtol=0, atol=0)
    torch.testing.assert_close(theta.detach(), 0.5 * g_hat)  # SGD ascends the fitness


def test_eggroll_rank_may_exceed_the_matrix_dimensions():
    # rank 5 on a 2 x 3 matrix: allowed; every member is W +- sigma A B^T / sqrt(5)
    W = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    opt = EGGROLL([W], lr=1.0, sigma=0.1, rank=5, population=2, seed=0)
    seen = {}

    def fitness(batch):
        seen["members"] = batch[0].materialize()  # its weight is W itself: read before the update
        return torch.tensor([1.0, 0.0])

    opt.step(fitness)
    factors = torch.randn((1, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    E = factors[0, :2] @ factors[0, 2:].T / math.sqrt(5)
    torch.testing.assert_close(seen["members"], torch.stack([0.1 * E, -0.1 * E]))


def test_base_optimizer_instance_brings_its_own_settings():
    # Prepare: an SGD instance on the same parameter
    theta = torch.zeros(2, requires_grad=True)
    opt = ES([theta], torch.optim.SGD([theta], lr=0.5), population=4)
    # Execute / Assert: its lr is used; passing lr as well is an error
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["weight_decay"] == 0
    with pytest.raises(ValueError, match="lr"):
        ES([theta], torch.optim.SGD([theta], lr=0.5), lr=0.1)


@pytest.mark.parametrize("cls", [ES, EGGROLL])
def test_population_of_a_tiny_hugging_face_model(cls):
    # Prepare: a 2-layer GPT-2 with random weights; fitness = -next-token loss per member
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(64, (2, 16), generator=torch.Generator().manual_seed(0))
    opt = cls(model.parameters(), population=4, sigma=0.01, lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]

    def fitness(batch):
        logits = population_call(model, opt.params, batch, ids, model_kwargs={"use_cache": False}).logits
        targets = ids[:, 1:].repeat(4, 1).reshape(-1)  # (N * 2 * 15,)
        nll = nn.functional.cross_entropy(logits[:, :, :-1].reshape(-1, 64), targets, reduction="none")
        return -nll.view(4, -1).mean(1)  # (N,)

    # Execute
    values = [opt.step(fitness) for _ in range(2)]
    # Assert
    assert all(v.shape == (4,) and torch.isfinite(v).all() for v in values)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
