"""Balanced online difficulty filtering: keep groups of intermediate pass rate."""
import pytest
import torch

from lab.models.policy import TabularPolicy
from lab.registry import get
from lab.rl import make_fn
from lab.rl.core import call_with
from lab.sampling.difficulty_filter import DifficultyFilter, pass_rates
from lab.rl.rollout import rollout
from toy_envs.token_tasks import make_task


# ---------------------------------------------------------------- hand-computed values
def test_spec_example_keeps_the_intermediate_prompts():
    # Prepare: G = 4, pass rates [0, 0.25, 0.5, 1]
    rewards = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1], dtype=torch.float)
    # Execute
    kept, metrics = DifficultyFilter(low=0.25, high=0.75).select(rewards, group_size=4)
    # Assert
    assert kept.tolist() == [1, 2]
    assert metrics["difficulty_filter/keep_frac"] == 0.5
    assert metrics["difficulty_filter/too_easy_frac"] == 0.25
    assert metrics["difficulty_filter/too_hard_frac"] == 0.25
    assert metrics["frac_zero_std_groups"] == 0.5


def test_pass_rates_with_group_ids_in_any_order():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    rates = pass_rates(rewards, group_ids=torch.tensor([7, 3, 7, 3]))   # groups sorted: 3, 7
    assert rates.tolist() == [0.5, 1.0]


def test_dapo_filter_is_the_special_case_std_above_zero():
    # with 0/1 rewards and T_low <= 1/G, T_high >= 1 - 1/G the filter keeps exactly the std > 0 groups
    g = torch.Generator().manual_seed(0)
    G = 8
    rewards = (torch.rand(40 * G, generator=g) < torch.rand(40, generator=g).repeat_interleave(G)).float()
    kept, _ = DifficultyFilter(low=1 / G, high=1 - 1 / G).select(rewards, group_size=G)
    nonzero_std = (rewards.view(-1, G).std(-1) > 0).nonzero()[:, 0]
    assert kept.tolist() == nonzero_std.tolist()


def test_refill_size_follows_the_keep_rate():
    f = DifficultyFilter(momentum=0.5, max_oversample=4)
    assert f.n_candidates(8) == 8                      # optimistic start: keep rate 1
    f.update(10, 5)                                    # keep rate 0.5·1 + 0.5·0.5 = 0.75
    assert f.keep_rate == pytest.approx(0.75)
    assert f.n_candidates(6) == 8                      # ceil(6 / 0.75)
    f.update(10, 0)
    f.update(10, 0)                                    # keep rate 0.1875
    assert f.n_candidates(6) == 24                     # capped at 4·6 (ceil(6/0.1875) = 32)


def test_state_dict_round_trip():
    f = DifficultyFilter(low=0.2, high=0.9)
    f.update(12, 3)
    g = DifficultyFilter()
    g.load_state_dict(f.state_dict())
    assert g.state_dict() == f.state_dict()
    assert g.n_candidates(5) == f.n_candidates(5)


# ---------------------------------------------------------------- behaviour on a toy
def test_filter_keeps_intermediate_groups_and_raises_the_nonzero_advantage_share():
    # Prepare: a batch from a random tabular policy on a mixture of arithmetic difficulties
    g = torch.Generator().manual_seed(0)
    tasks = [make_task("arithmetic", max_operand=m) for m in (1, 9)]
    policy = TabularPolicy.for_task(tasks[1], init_std=2.0, generator=g)
    ros = [rollout(policy, t, 24, 8, generator=g, max_new_tokens=3) for t in tasks]
    rewards = torch.cat([r.rewards for r in ros])
    G = 8
    # Execute
    kept, metrics = get("sampler", "difficulty_filter")().select(rewards, group_size=G)
    advantages, _ = call_with(make_fn("advantage", "grpo"), {"rewards": rewards, "group_size": G})
    nonzero = advantages.view(-1, G).abs().sum(-1) > 0                       # (n_groups,)
    # Assert: every kept group has intermediate accuracy and a learning signal
    rates = rewards.view(-1, G).mean(-1)
    assert len(kept) > 0
    assert ((rates[kept] >= 0.25) & (rates[kept] <= 0.75)).all()
    assert nonzero[kept].all()
    assert nonzero[kept].float().mean() > nonzero.float().mean()
    assert metrics["frac_zero_std_groups"] > 0                              # there was waste to remove


# ---------------------------------------------------------------- edge cases and bad input
def test_nothing_or_everything_passes():
    f = DifficultyFilter()
    kept, metrics = f.select(torch.ones(8), group_size=4)
    assert kept.numel() == 0 and metrics["difficulty_filter/keep_frac"] == 0.0
    kept, _ = DifficultyFilter(low=0.0, high=1.0).select(torch.ones(8), group_size=4)
    assert kept.tolist() == [0, 1]
    kept, _ = f.select(torch.zeros(0), group_size=4)
    assert kept.numel() == 0


@pytest.mark.parametrize("make, error, match", [
    (lambda: DifficultyFilter(low=0.8, high=0.2), ValueError, "low"),
    (lambda: DifficultyFilter(high=1.5), ValueError, "high"),
    (lambda: DifficultyFilter(max_oversample=0.5), ValueError, "max_oversample"),
    (lambda: DifficultyFilter().select(torch.tensor([0.0, 2.0]), group_size=2), ValueError, "rewards"),
    (lambda: DifficultyFilter().select(torch.tensor([0.0, float("nan")]), group_size=2), ValueError, "rewards"),
    (lambda: DifficultyFilter().select(torch.zeros(6), group_size=4), ValueError, "group_size"),
    (lambda: DifficultyFilter().update(3, 4), ValueError, "n_kept"),
    (lambda: DifficultyFilter().update(3.0, 1), TypeError, "n_seen"),
])
def test_bad_input_names_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_select_computes_on_the_rewards_device_and_keeps_host_bookkeeping():
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    f = DifficultyFilter(0.25, 0.75)
    with torch.device("meta"):                      # nothing may follow the default device
        keep, _ = f.select(rewards, group_size=2)
        f.update(3, len(keep))
    assert keep.device == rewards.device and keep.tolist() == [1]
    assert isinstance(f.keep_rate, float) and f.n_candidates(2) == 3     # keep rate 0.9 + 0.1/3


def test_curriculum_with_the_filter_passes_the_device_guard():
    # as tests/test_devices.py (whose smoke config uses VADE): nothing may land on the default device
    from lab.experiments import run

    with torch.device("meta"):
        h = run("curriculum", device="cpu", sampler="difficulty_filter", steps=2, pool_size=4, n_prompts=4,
                group_size=4)
    assert len(h["reward"]) == 2
