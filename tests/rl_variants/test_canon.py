"""CANON: inter/intra half-group advantages after regrouping by a metric."""
import pytest
import torch

from lab.registry import get
from lab.rl.canon import canon_advantages, split_halves


# ---------------------------------------------------------------- hand-computed values
@pytest.mark.parametrize("mu, expected", [
    (1.0, [0.5, 0.5, -1.0, 0.0]),      # A^inter
    (0.0, [0.0, 0.0, -0.5, 0.5]),      # A^intra
    (0.5, [0.25, 0.25, -0.75, 0.25]),  # = R − 0.75 (Dr. GRPO)
])
def test_spec_example(mu, expected):
    # Prepare: R = [1, 1, 0, 1], entropy [0.1, 0.2, 0.9, 0.8] -> G⁻ = {0, 1}, G⁺ = {2, 3}
    rewards = torch.tensor([1., 1, 0, 1])
    metric = torch.tensor([0.1, 0.2, 0.9, 0.8])
    # Execute
    adv, metrics = canon_advantages(rewards, group_size=4, metric=metric, mu=mu)
    # Assert
    assert adv.tolist() == pytest.approx(expected)
    assert metrics["canon/inter_gap"] == pytest.approx(-0.5)   # the low-entropy half wins


def test_entropy_metric_from_token_entropies():
    rewards = torch.tensor([1., 1, 0, 1])
    entropy = torch.tensor([[0.1, 0.1, 9.0], [0.2, 0.2, 9.0], [0.9, 0.9, 0.9], [0.8, 0.8, 0.8]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]])      # padding entropy ignored
    adv, _ = canon_advantages(rewards, group_size=4, entropy=entropy, mask=mask, mu=1.0)
    assert adv.tolist() == pytest.approx([0.5, 0.5, -1.0, 0.0])


def test_length_metric_and_canon_eff_alpha():
    # lengths [1, 2, 3, 4]: short half {0, 1} (R 1, 0), long half {2, 3} (R 1, 1)
    rewards = torch.tensor([1., 0, 1, 1])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    adv, _ = canon_advantages(rewards, group_size=4, mask=mask, by="length", mu=1.0, alpha=0.9)
    # G⁻: R − α·mean(G⁺) = R − 0.9;  G⁺: α·R − mean(G⁻) = 0.9 − 0.5
    assert adv.tolist() == pytest.approx([0.1, -0.9, 0.4, 0.4])


# ---------------------------------------------------------------- limiting case: Dr. GRPO
def test_mu_half_equals_dr_grpo_on_random_even_groups():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(48, generator=g, dtype=torch.float64)
    metric = torch.rand(48, generator=g, dtype=torch.float64)
    adv, _ = canon_advantages(rewards, group_size=8, metric=metric, mu=0.5)
    dr, _ = get("advantage", "dr_grpo")(rewards, group_size=8)
    assert torch.allclose(adv, dr, atol=1e-7)


def test_odd_groups_break_the_dr_grpo_identity_and_lower_half_is_floor():
    metric = torch.tensor([3., 2, 1])
    assert split_halves(metric, torch.zeros(3, dtype=torch.long)).tolist() == [True, True, False]
    adv, _ = canon_advantages(torch.tensor([1., 0, 1]), group_size=3, metric=metric, mu=0.5)
    dr, _ = get("advantage", "dr_grpo")(torch.tensor([1., 0, 1]), group_size=3)
    assert not torch.allclose(adv, dr)


def test_ties_keep_original_order():
    assert split_halves(torch.ones(4), torch.zeros(4, dtype=torch.long)).tolist() == [False, False, True, True]


def test_inter_signal_amplifies_the_winning_trend():
    # higher-entropy half always right, lower half always wrong: CANON-Inter gives ±1, Dr. GRPO ±0.5
    rewards = torch.tensor([0., 0, 1, 1])
    metric = torch.tensor([0.1, 0.2, 0.7, 0.9])
    adv, metrics = canon_advantages(rewards, group_size=4, metric=metric, mu=1.0)
    assert adv.tolist() == [-1.0, -1.0, 1.0, 1.0]
    assert metrics["canon/inter_gap"] == pytest.approx(1.0)


def test_dynamic_switch_swaps_mu():
    rewards, metric = torch.tensor([1., 1, 0, 1]), torch.tensor([0.1, 0.2, 0.9, 0.8])
    early, _ = canon_advantages(rewards, group_size=4, metric=metric, mu=1.0, step=3, switch_step=10)
    late, m = canon_advantages(rewards, group_size=4, metric=metric, mu=1.0, step=10, switch_step=10)
    assert early.tolist() == pytest.approx([0.5, 0.5, -1.0, 0.0])
    assert late.tolist() == pytest.approx([0.0, 0.0, -0.5, 0.5]) and m["canon/mu"] == 0.0


# ---------------------------------------------------------------- edge cases and bad input
def test_equal_rewards_and_singletons_give_zero():
    adv, _ = canon_advantages(torch.ones(4), group_size=4, metric=torch.rand(4))
    assert adv.tolist() == [0.0] * 4
    adv, _ = canon_advantages(torch.tensor([1., 0]), group_size=1, metric=torch.tensor([0.3, 0.1]))
    assert adv.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("kwargs, match", [
    ({"metric": torch.rand(4), "mu": 1.5}, "mu"),
    ({"metric": torch.rand(3)}, "metric"),
    ({}, "mask"),
    ({"mask": torch.ones(4, 2)}, "entropy"),
    ({"mask": torch.ones(4, 2), "by": "speed"}, "by"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        canon_advantages(torch.tensor([1., 0, 1, 0]), group_size=4, **kwargs)


def test_through_the_training_loop_mu_one_half_is_dr_grpo_step_for_step():
    # the loop's batch carries token entropies and the mask: CANON regroups by mean entropy, and
    # with μ = 0.5 its advantage is Dr. GRPO's exactly, so the whole run is the same; μ = 1 is not
    import numpy as np
    from lab.experiments import run

    kw = dict(loss="dr_grpo", task="reverse(difficulty=2)", steps=5)
    half = run("policy_optimization", advantage="canon(mu=0.5)", **kw)
    dr = run("policy_optimization", advantage="dr_grpo", **kw)
    inter = run("policy_optimization", advantage="canon(mu=1.0)", **kw)
    assert np.array_equal(half["reward"], dr["reward"]) and np.allclose(half["loss"], dr["loss"])
    assert not np.allclose(inter["loss"], dr["loss"])


def test_default_mu_is_canon_inter():
    # μ = 1 by default (the paper's math setting): A = A^inter = [0.5, 0.5, −1, 0] on the spec example
    adv, _ = canon_advantages(torch.tensor([1., 1, 0, 1]), group_size=4,
                              metric=torch.tensor([0.1, 0.2, 0.9, 0.8]))
    assert adv.tolist() == pytest.approx([0.5, 0.5, -1.0, 0.0])
