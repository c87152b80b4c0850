"""Tests of lab.rl.core: the shared pieces, checked by hand-computed values and invariants."""
import math

import pytest
import torch

from lab.rl import core
from lab.rl.core import GlobalNorm


def _lp_mask():
    # ℓ = [[-1, -2], [-3, pad]] (spec SFT example), pad = NaN must be ignored
    logprobs = torch.tensor([[-1.0, -2.0], [-3.0, float("nan")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    return logprobs, mask


# ---------------------------------------------------------------- masked statistics
def test_masked_stats_ignore_padding():
    x, mask = _lp_mask()
    assert core.masked_sum(x, mask).item() == -6.0
    assert core.masked_mean(x, mask).item() == -2.0
    assert core.masked_var(x, mask).item() == pytest.approx(1.0)          # var of -1,-2,-3 (Bessel)
    assert core.masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert torch.equal(core.masked_sum(x, mask, dim=-1), torch.tensor([-3.0, -3.0], dtype=torch.float64))


def test_masked_whiten_single_token_is_finite():
    x = torch.tensor([[2.0, 5.0]])
    w = core.masked_whiten(x, torch.tensor([[1, 0]]))
    assert torch.isfinite(w).all() and w.tolist() == [[0.0, 0.0]]


def test_masked_whiten_zero_mean_unit_var():
    x = torch.tensor([[1.0, 2.0, 7.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w = core.masked_whiten(x, mask)
    assert core.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert core.masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------- aggregation
def test_aggregate_modes_hand_computed():
    # Prepare: per-token loss x = -ℓ = [[1, 2], [3, pad]]
    logprobs, mask = _lp_mask()
    x = -logprobs
    # Execute / Assert
    assert core.aggregate(x, mask, "token_mean").item() == pytest.approx(2.0)            # 6/3
    assert core.aggregate(x, mask, "seq_mean_token_mean").item() == pytest.approx(2.25)  # (1.5+3)/2
    assert core.aggregate(x, mask, "seq_mean_token_sum").item() == pytest.approx(3.0)    # (3+3)/2
    assert core.aggregate(x, mask, "seq_mean_token_sum_norm").item() == pytest.approx(1.5)  # 6/(2·2)
    norm = GlobalNorm(norm_const=4)
    assert core.aggregate(x, mask, "seq_mean_token_sum_norm", norm).item() == pytest.approx(0.75)


def test_aggregate_gradient_weights_differ_by_length():
    # per-token gradient weight of each mode for a short (1) and long (3) response
    x = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    weights = {}
    for agg in core.AGG_MODES:
        (g,) = torch.autograd.grad(core.aggregate(x, mask, agg), x)
        weights[agg] = (g[0, 0].item(), g[1, 0].item())
    assert weights["token_mean"] == pytest.approx((1 / 4, 1 / 4))
    assert weights["seq_mean_token_mean"] == pytest.approx((1 / 2, 1 / 6))   # short tokens weigh more
    assert weights["seq_mean_token_sum"] == pytest.approx((1 / 2, 1 / 2))
    assert weights["seq_mean_token_sum_norm"] == pytest.approx((1 / 6, 1 / 6))


def test_aggregate_empty_rows_excluded_and_empty_mask_keeps_graph():
    x = torch.tensor([[1.0, 1.0], [5.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [0, 0]])
    assert core.aggregate(x, mask, "seq_mean_token_mean").item() == pytest.approx(1.0)
    empty = core.aggregate(x, torch.zeros(2, 2), "token_mean")
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(x.grad, torch.zeros(2, 2))


@pytest.mark.parametrize("agg", core.AGG_MODES)
def test_gradient_accumulation_with_global_norm_equals_full_batch(agg):
    # Prepare: 6 rows of different lengths (one empty), split into micro-batches of 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 1, 0, 3, 2, 4])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    full = core.aggregate(x, mask, agg)
    norm = GlobalNorm.of(mask)
    # Execute
    micro = sum(core.aggregate(x[i:i + 2], mask[i:i + 2], agg, norm) for i in range(0, 6, 2))
    # Assert: same value and same gradient; a local per-micro-batch mean differs
    assert micro.item() == pytest.approx(full.item(), rel=1e-12)
    (g_full,) = torch.autograd.grad(full, x)
    (g_micro,) = torch.autograd.grad(micro, x)
    assert torch.allclose(g_full, g_micro)
    local = sum(core.aggregate(x[i:i + 2], mask[i:i + 2], agg) for i in range(0, 6, 2)) / 3
    if agg != "seq_mean_token_sum_norm":
        assert local.item() != pytest.approx(full.item(), rel=1e-6)


def test_aggregate_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="agg"):
        core.aggregate(x, torch.ones(2, 3), "mean")
    with pytest.raises(ValueError, match="mask"):
        core.aggregate(x, torch.ones(2, 2))


def test_sequence_logprobs():
    logprobs, mask = _lp_mask()
    assert core.sequence_logprobs(logprobs, mask).tolist() == [-3.0, -3.0]
    assert core.sequence_logprobs(logprobs, mask, normalize=True).tolist() == [-1.5, -3.0]
    assert core.sequence_logprobs(logprobs, torch.zeros(2, 2), normalize=True).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- group statistics
def test_group_normalize_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    a, _ = core.group_normalize(rewards, group_size=4)
    assert a.tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    a, _ = core.group_normalize(rewards, group_size=4, std="population")
    assert a.tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-5)
    a, _ = core.group_normalize(rewards, group_size=4, std="none")
    assert a.tolist() == [0.5, -0.5, -0.5, 0.5]
    a, _ = core.group_normalize(rewards, group_size=4, eps=1e-4)             # TRL's eps
    assert a[0].item() == pytest.approx(0.86588, abs=1e-5)


def test_group_normalize_invariant_to_shift_and_scale():
    g = torch.Generator().manual_seed(1)
    rewards = torch.rand(12, generator=g, dtype=torch.float64)
    a, _ = core.group_normalize(rewards, group_size=4, eps=0.0)
    shifted, _ = core.group_normalize(rewards + 3.0, group_size=4, eps=0.0)
    scaled, _ = core.group_normalize(rewards * 7.0, group_size=4, eps=0.0)
    assert torch.allclose(a, shifted) and torch.allclose(a, scaled)


def test_group_ids_match_group_size_and_allow_any_order():
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0, 0.0, 1.0])
    by_size, _ = core.group_normalize(rewards, group_size=3)
    ids = torch.tensor([7, 7, 7, 3, 3, 3])
    by_ids, _ = core.group_normalize(rewards, group_ids=ids)
    assert torch.allclose(by_size, by_ids)
    perm = torch.tensor([5, 0, 3, 1, 4, 2])
    by_perm, _ = core.group_normalize(rewards[perm], group_ids=ids[perm])
    assert torch.allclose(by_perm, by_size[perm])


def test_all_equal_and_singleton_groups_give_zero():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.5, 3.0])
    a, stats = core.group_normalize(rewards, group_ids=torch.tensor([0, 0, 0, 1, 2, 3]))
    assert a.tolist() == [0.0] * 6
    assert stats.zero_std.tolist() == [True, True, True, True]
    a, stats = core.group_normalize(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2)
    assert stats.zero_std.tolist() == [False, True]
    assert core.advantage_metrics(a, stats=stats)["frac_zero_std_groups"] == 0.5


def test_group_stats_two_dim_rewards():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [1.0, 2.0]])
    stats = core.group_stats(rewards, group_size=2, std="population")
    assert stats.mean.tolist() == [[0.5, 0.0], [0.5, 0.0], [0.5, 2.0], [0.5, 2.0]]
    assert stats.std[:, 0].tolist() == [0.5] * 4


def test_group_bad_inputs():
    rewards = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    with pytest.raises(ValueError, match="rewards"):
        core.group_normalize(rewards, group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        core.group_normalize(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        core.group_normalize(torch.zeros(4))
    with pytest.raises(ValueError, match="contiguous"):
        core.group_normalize(torch.zeros(4), group_size=2, group_ids=torch.tensor([0, 1, 0, 1]))
    same, _ = core.group_normalize(torch.arange(4.0), group_size=2, group_ids=torch.tensor([5, 5, 2, 2]))
    assert same.tolist() == pytest.approx([-0.7071, 0.7071, -0.7071, 0.7071], abs=1e-4)
    with pytest.raises(ValueError, match="group_ids"):
        core.group_normalize(torch.zeros(4), group_ids=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="std"):
        core.group_normalize(torch.zeros(4), group_size=2, std="sample")


# ---------------------------------------------------------------- ratio, clipping, KL
def test_ratio_clamps_log_ratio():
    rho = core.ratio(torch.tensor([[500.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    assert torch.isfinite(rho).all()
    assert rho[0, 0].item() == pytest.approx(math.exp(20.0)) and rho[0, 1].item() == 1.0


def test_clipped_surrogate_hand_computed():
    # Prepare: the spec's examples
    rho = torch.tensor([[1.5, 0.5, 5.0, 1.1]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    # Execute
    pg, regions = core.clipped_surrogate(rho, adv, 0.2, 0.2, dual_clip=3.0)
    pg.sum().backward()
    # Assert
    assert pg.detach().tolist()[0] == pytest.approx([-1.2, 0.8, 3.0, -1.1])
    assert rho.grad.tolist()[0] == pytest.approx([0.0, 0.0, 0.0, -1.0])    # clipped tokens: no grad
    assert regions["high"].tolist() == [[True, False, False, False]]
    assert regions["low"].tolist() == [[False, True, False, False]]
    assert regions["dual"].tolist() == [[False, False, True, False]]


def test_clip_higher_decoupled():
    rho = torch.tensor([[1.25]])
    pg_sym, _ = core.clipped_surrogate(rho, torch.tensor([[1.0]]), 0.2, 0.2)
    pg_high, _ = core.clipped_surrogate(rho, torch.tensor([[1.0]]), 0.2, 0.28)
    assert pg_sym.item() == pytest.approx(-1.2) and pg_high.item() == pytest.approx(-1.25)


def test_clip_bad_inputs():
    with pytest.raises(ValueError, match="dual_clip"):
        core.clipped_surrogate(torch.ones(1, 1), torch.ones(1, 1), dual_clip=0.5)
    with pytest.raises(ValueError, match="clip_eps_low"):
        core.clipped_surrogate(torch.ones(1, 1), torch.ones(1, 1), clip_eps_low=-0.1)


def test_kl_estimators_hand_computed():
    lp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    assert core.kl(lp, ref, "k1").item() == pytest.approx(0.5)
    assert core.kl(lp, ref, "k2").item() == pytest.approx(0.125)
    assert core.kl(lp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)
    with pytest.raises(ValueError, match="kl_estimator"):
        core.kl(lp, ref, "k4")


def test_kl_estimators_unbiased_on_categorical():
    # KL(p‖q) exactly vs the Monte-Carlo mean of k1 and k3 over samples of p; k3 >= 0 always
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    exact = (p * (p / q).log()).sum()
    lp, lq = p.log()[None, :], q.log()[None, :]
    for est in ("k1", "k3"):
        expectation = (p * core.kl(lp, lq, est)[0]).sum()
        assert expectation.item() == pytest.approx(exact.item(), rel=1e-9)
    assert (core.kl(lp, lq, "k3") >= 0).all()


# ---------------------------------------------------------------- the shared clipped loss
def _batch(seed=0, B=4, T=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, generator=g, dtype=torch.float64)
    logprobs = torch.nn.functional.logsigmoid(logits).requires_grad_(True)
    mask = torch.arange(T)[None, :] < torch.tensor([5, 2, 3, 1])[:, None]
    adv = torch.tensor([0.9, -0.3, 0.0, -1.2], dtype=torch.float64)
    return logprobs, mask, adv


@pytest.mark.parametrize("agg", core.AGG_MODES)
def test_on_policy_gradient_equals_reinforce(agg):
    logprobs, mask, adv = _batch()
    loss, _ = core.clipped_policy_loss(logprobs, logprobs.detach(), adv, mask, agg=agg)
    (g_clip,) = torch.autograd.grad(loss, logprobs)
    reinforce = core.aggregate(-adv[:, None] * logprobs, mask, agg)
    (g_pg,) = torch.autograd.grad(reinforce, logprobs)
    assert torch.allclose(g_clip, g_pg)


def test_clipped_policy_loss_kl_term_and_metrics():
    logprobs, mask, adv = _batch()
    ref = logprobs.detach() - 0.1
    old = logprobs.detach() + torch.tensor([[0.5], [0.0], [0.0], [-0.5]], dtype=torch.float64)
    loss, m = core.clipped_policy_loss(logprobs, old, adv, mask, ref_logprobs=ref, beta=0.5,
                                       kl_estimator="k1", entropy=torch.ones(4, 5),
                                       return_per_token=True)
    assert m["kl"] == pytest.approx(0.1)
    assert m["loss"] == pytest.approx(m["pg_loss"] + 0.5 * 0.1)
    assert m["entropy"] == 1.0 and m["num_tokens"] == 11 and m["num_seqs"] == 4
    # row 0: ρ = e^-0.5 < 0.8 but A > 0 -> not clipped; row 3: ρ = e^0.5 > 1.2, A < 0 -> not clipped
    assert m["clip_frac"] == 0.0
    assert m["ratio_min"] == pytest.approx(math.exp(-0.5)) and m["ratio_max"] == pytest.approx(math.exp(0.5))
    assert m["per_token_loss"].shape == (4, 5)
    assert {"adv_mean", "adv_std", "adv_abs_max", "adv_zero_frac", "kl_old", "clip_frac_low",
            "clip_frac_high", "ratio_mean"} <= set(m)


def test_clipped_policy_loss_clip_fraction_counts_binding_regions():
    lp = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)   # ρ = e^0.5, 1 | e^-0.5, 1
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    _, m = core.clipped_policy_loss(lp, old, adv, torch.ones(2, 2))
    assert m["clip_frac_high"] == 0.25 and m["clip_frac_low"] == 0.25 and m["clip_frac"] == 0.5


def test_clipped_policy_loss_empty_mask():
    logprobs, _, adv = _batch()
    loss, m = core.clipped_policy_loss(logprobs, None, adv, torch.zeros(4, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and m["num_tokens"] == 0 and torch.isfinite(logprobs.grad).all()


def test_clipped_policy_loss_bad_inputs():
    logprobs, mask, adv = _batch()
    with pytest.raises(ValueError, match="old_logprobs"):
        core.clipped_policy_loss(logprobs, torch.zeros(4, 4, dtype=torch.float64), adv, mask)
    with pytest.raises(ValueError, match="old_logprobs"):
        core.clipped_policy_loss(logprobs, logprobs, adv, mask)                 # not detached
    with pytest.raises(ValueError, match="mask"):
        core.clipped_policy_loss(logprobs, None, adv, mask[:, :3])
    with pytest.raises(ValueError, match="advantages"):
        core.clipped_policy_loss(logprobs, None, adv[:3], mask)
    with pytest.raises(ValueError, match="advantages"):
        core.clipped_policy_loss(logprobs, None, torch.full((4,), float("nan"), dtype=torch.float64), mask)
    with pytest.raises(ValueError, match="ref_logprobs"):
        core.clipped_policy_loss(logprobs, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        core.clipped_policy_loss(logprobs, None, adv, mask, beta=-1.0)


def test_half_precision_inputs_are_upcast():
    logprobs, mask, adv = _batch()
    loss, _ = core.clipped_policy_loss(logprobs.detach().bfloat16().requires_grad_(), None,
                                       adv.bfloat16(), mask)
    assert loss.dtype == torch.float32


# ---------------------------------------------------------------- call_with / make_fn
def _estimator(rewards, *, group_size=None, mask=None, scale=1.0):
    return rewards * scale, {"got_mask": mask is not None, "group_size": group_size}


class _Counter:
    def __init__(self, start=0):
        self.calls = start

    def __call__(self, rewards, *, step=None):
        self.calls += 1
        return rewards, {"calls": self.calls}


def test_call_with_passes_only_named_entries():
    batch = {"rewards": torch.ones(2), "group_size": 2, "logprobs": torch.zeros(2, 3), "mask": None}
    out, m = core.call_with(_estimator, batch)
    assert out.tolist() == [1.0, 1.0] and m == {"got_mask": False, "group_size": 2}


def test_call_with_keeps_partial_keywords_and_reports_missing():
    import functools

    fn = functools.partial(_estimator, scale=3.0)
    out, _ = core.call_with(fn, {"rewards": torch.ones(1), "scale": 10.0})
    assert out.tolist() == [3.0]
    assert core.wants(fn) == {"rewards", "group_size", "mask"}
    with pytest.raises(TypeError, match="rewards"):
        core.call_with(fn, {"mask": torch.ones(1, 1)})


def test_call_with_class_instance_keeps_state():
    counter = _Counter()
    for _ in range(3):
        _, m = core.call_with(counter, {"rewards": torch.ones(1), "step": 0})
    assert m["calls"] == 3
