"""BNPO: Beta normalization of binary-reward advantages (not TRL's loss_type="bnpo")."""
import math

import pytest
import torch

from lab.registry import get
from lab.rl import group_normalize
from lab.rl.bnpo import beta_log_density, bnpo_advantages, fit_beta_parameters


# ---------------------------------------------------------------- hand-computed values
def test_spec_example_two_groups():
    # Prepare: p = 0.5 and p = 0.25 -> μ = 0.375, σ² = 0.03125, c = 6.5
    rewards = torch.tensor([1., 0, 0, 1, 1, 0, 0, 0], dtype=torch.float64)
    # Execute
    adv, metrics = bnpo_advantages(rewards, group_size=4)
    # Assert
    assert metrics["bnpo/alpha"] == pytest.approx(1.8125)
    assert metrics["bnpo/beta"] == pytest.approx(2.354167, abs=1e-6)
    expected = [0.34085, -0.34085, -0.34085, 0.34085, 0.51855, -0.17285, -0.17285, -0.17285]
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)


def test_beta_density_matches_scipy():
    from scipy.stats import beta as beta_dist
    p = torch.tensor([0.1, 0.25, 0.5, 0.9], dtype=torch.float64)
    got = beta_log_density(p, 1.8125, 2.354167).exp()
    assert got.tolist() == pytest.approx(beta_dist.pdf(p.numpy(), 1.8125, 2.354167).tolist(), rel=1e-9)


# ---------------------------------------------------------------- limiting cases (the paper's)
def test_alpha_beta_one_is_reinforce_with_group_mean_baseline():
    rewards = torch.tensor([1., 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1])
    adv, _ = bnpo_advantages(rewards, group_size=4, norm_alpha=1.0, norm_beta=1.0)
    baseline, _ = get("advantage", "reinforce_baseline")(rewards, group_size=4)
    assert torch.allclose(adv, baseline, atol=1e-6)


def test_alpha_beta_three_halves_is_grpo_times_pi_over_8():
    rewards = torch.tensor([1., 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1], dtype=torch.float64)
    adv, _ = bnpo_advantages(rewards, group_size=4, norm_alpha=1.5, norm_beta=1.5)
    grpo_pop, _ = group_normalize(rewards, group_size=4, std="population", eps=0.0)
    assert torch.allclose(adv, math.pi / 8 * grpo_pop, atol=1e-9)


def test_single_group_uses_uniform_beta():
    adv, metrics = bnpo_advantages(torch.tensor([1., 0, 0, 0]), group_size=4)
    assert (metrics["bnpo/alpha"], metrics["bnpo/beta"]) == (1.0, 1.0)
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


# ---------------------------------------------------------------- advantage decomposition
def test_decomposition_averages_per_component_advantages():
    acc = torch.tensor([1., 0, 0, 1, 1, 0, 0, 0])
    fmt = torch.tensor([1., 1, 0, 1, 0, 0, 1, 0])
    both, metrics = bnpo_advantages(torch.stack([acc, fmt], 1), group_size=4)
    a_acc, m_acc = bnpo_advantages(acc, group_size=4)
    a_fmt, m_fmt = bnpo_advantages(fmt, group_size=4)
    assert torch.allclose(both, (a_acc + a_fmt) / 2, atol=1e-6)
    assert metrics["bnpo/alpha_0"] == pytest.approx(m_acc["bnpo/alpha"])
    assert metrics["bnpo/beta_1"] == pytest.approx(m_fmt["bnpo/beta"])


def test_identical_components_equal_one_component():
    r = torch.tensor([1., 0, 0, 1, 1, 0, 0, 0])
    assert torch.allclose(bnpo_advantages(torch.stack([r, r], 1), group_size=4)[0],
                          bnpo_advantages(r, group_size=4)[0])


# ---------------------------------------------------------------- edge cases and bad input
def test_equal_success_rates_fall_back_to_the_uniform_beta_explicitly():
    # every group p = 0.5: σ² = 0, no Beta fit exists. The lab uses α = β = 1 (A = R − p, as for a
    # single group) and says so; clamping σ² instead gave α, β ≈ 4e6 and |A| ≈ 3e-4 (no update).
    adv, metrics = bnpo_advantages(torch.tensor([1., 0, 1., 0, 1., 0]), group_size=2)
    assert (metrics["bnpo/alpha"], metrics["bnpo/beta"]) == (1.0, 1.0)
    assert metrics["bnpo/degenerate_fit"] == 1.0
    assert adv.tolist() == pytest.approx([0.5, -0.5] * 3)
    baseline, _ = get("advantage", "reinforce_baseline")(torch.tensor([1., 0, 1., 0, 1., 0]), group_size=2)
    assert torch.allclose(adv, baseline)
    # 16 groups of 8 with 4 successes each: the same, whatever the batch size
    rewards = torch.tensor([1., 1, 1, 1, 0, 0, 0, 0] * 16)
    adv, metrics = bnpo_advantages(rewards, group_size=8)
    assert metrics["bnpo/degenerate_fit"] == 1.0 and adv.abs().min() == pytest.approx(0.5)


def test_distinct_success_rates_are_fitted_and_not_flagged():
    adv, metrics = bnpo_advantages(torch.tensor([1., 0, 0, 1, 1, 0, 0, 0]), group_size=4)
    assert metrics["bnpo/degenerate_fit"] == 0.0 and metrics["bnpo/alpha"] != 1.0
    # the smallest non-zero spread of success rates (one group differs by one answer in 1/G)
    rates = torch.tensor([0.5] * 31 + [0.5 + 1 / 16], dtype=torch.float64)
    assert not fit_beta_parameters(rates) == (1.0, 1.0)
    assert fit_beta_parameters(torch.full((32,), 0.5, dtype=torch.float64)) == (1.0, 1.0)


def test_homogeneous_groups_get_zero_advantage():
    # all-wrong / all-right groups: R̃ − p = 0 (their density may be 0, the weight w_max)
    adv, metrics = bnpo_advantages(torch.tensor([0., 0, 1, 1, 1, 0, 0, 0]), group_size=2)
    assert torch.isfinite(adv).all() and adv[:4].tolist() == [0.0] * 4
    assert metrics["bnpo/degenerate_fit"] == 0.0


def test_reward_range_is_mapped_to_unit_interval():
    r = torch.tensor([1., 0, 0, 1, 1, 0, 0, 0])
    a, _ = bnpo_advantages(r, group_size=4)
    b, _ = bnpo_advantages(2 * r - 1, group_size=4, r_min=-1.0, r_max=1.0)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"rewards": torch.tensor([0.0, 2.0])}, "rewards"),
    ({"rewards": torch.tensor([0.0, float("nan")])}, "rewards"),
    ({"rewards": torch.tensor([0.0, 1.0]), "r_min": 1.0, "r_max": 0.0}, "r_max"),
    ({"rewards": torch.tensor([0.0, 1.0]), "norm_alpha": -1.0}, "norm_alpha"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bnpo_advantages(group_size=2, **kwargs)


# ---------------------------------------------------------------- behaviour
def test_lower_advantage_variance_than_grpo_on_binary_rewards():
    # Prepare: 64 prompts whose success rates follow a Beta distribution (as over a training batch),
    # 8 binary answers each
    import numpy as np

    rng = np.random.default_rng(0)                                 # seeded: never the global RNG
    p = torch.as_tensor(rng.beta(2.0, 3.0, size=64), dtype=torch.float32)
    rewards = torch.as_tensor(rng.random((64, 8)) < p.numpy()[:, None], dtype=torch.float32).flatten()
    # Execute
    bnpo, metrics = bnpo_advantages(rewards, group_size=8)
    grpo, _ = get("advantage", "grpo")(rewards, group_size=8)
    # Assert: same signs, lower variance; the fit follows the batch's difficulty (a < b -> α < β)
    informative = grpo != 0
    assert torch.equal(torch.sign(bnpo[informative]), torch.sign(grpo[informative]))
    assert bnpo.var() < grpo.var()
    assert metrics["bnpo/alpha"] < metrics["bnpo/beta"]


def test_parameters_follow_the_changing_difficulty():
    # an easy batch (high success rates) flips the fitted shape compared with a hard one
    rates = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.15, 0.25])
    a_hard, b_hard = fit_beta_parameters(rates)
    a_easy, b_easy = fit_beta_parameters(1 - rates)
    assert a_hard < b_hard and a_easy > b_easy
    assert (a_hard, b_hard) == pytest.approx((b_easy, a_easy))


def test_runs_through_the_training_loop_by_name_and_refits_every_batch():
    # through the loop: the Beta parameters are refitted on every rollout (they move with the
    # batch's success rates), and the advantages the loop logs are BNPO's (not GRPO's) on the
    # last batch, recomputed here from its rewards
    import numpy as np
    from lab.experiments import run

    h = run("policy_optimization", advantage="bnpo", loss="dapo", task="token_bandit(n_contexts=8)",
            steps=6, n_prompts=8, group_size=8)
    alphas = h["bnpo/alpha"]
    assert np.all(alphas >= 1.0) and len(set(np.round(alphas, 6))) > 1
    last = h.artifacts["last_batch"]
    rewards = torch.tensor(last["rewards"])
    expected, m = bnpo_advantages(rewards, group_size=last["group_size"])
    assert m["bnpo/alpha"] == pytest.approx(float(alphas[-1]))
    logged = torch.tensor([[a for a in row if a == a][0] for row in last["advantages"]])
    assert torch.allclose(logged, expected.float(), atol=1e-6)


def test_singleton_group_gets_zero_advantage_unlike_the_reference_code():
    # reference code: p := 0 for a group of one (A = R̃·w ≠ 0); the lab: p = R̃, A = 0
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    adv, _ = bnpo_advantages(rewards, group_ids=torch.tensor([0, 0, 1, 1, 2]))
    assert adv[4].item() == 0.0
    assert adv[0].item() > 0 > adv[1].item()
