"""Weighted Tallying Bandit env and successive elimination."""
import itertools

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

from toy_envs.tallying_bandit import SuccessiveElimination, WeightedTallyingBanditEnv, run_agent


@pytest.mark.parametrize("expose", [False, True])
def test_check_env(expose):
    check_env(WeightedTallyingBanditEnv(expose_history=expose), skip_render_check=True)


def test_registered_in_gymnasium_and_lab():
    import toy_envs  # noqa: F401
    from lab.experiments.bandits import tallying_bandit  # noqa: F401  (registers kind env)
    from lab.registry import get

    env = gymnasium.make("toy_envs/WeightedTallyingBandit-v0")
    assert isinstance(env.unwrapped, WeightedTallyingBanditEnv)
    assert get("env", "weighted_tallying_bandit") is WeightedTallyingBanditEnv


def test_tally_by_hand():
    # Prepare: m = 3, lambda = 0.5 -> w = [1, 0.5, 0.25]; plays 0, 1, 0 (most recent last)
    env = WeightedTallyingBanditEnv(memory=3, decay=0.5)
    env.reset(seed=0)
    for arm in (0, 1, 0):
        env.step(arm)
    # Execute / Assert: tau(0) = w1 + w3 = 1.25, tau(1) = w2 = 0.5, tau(2) = 0
    assert env.tallies().tolist() == [1.25, 0.5, 0.0]
    env.step(2)  # the oldest play (arm 0) leaves the window
    assert env.tallies().tolist() == [0.5, 0.25, 1.0]


def test_losses_by_hand():
    env = WeightedTallyingBanditEnv(memory=2, decay=1.0, noise=0.0)  # W = 2
    env.reset(seed=0)
    # arm 2: mu 0.7, g 0.3 -> f(0) = 0.7, f(1) = 0.55, f(2) = 0.4
    rewards = [env.step(2)[1] for _ in range(4)]
    assert rewards == pytest.approx([-0.7, -0.55, -0.4, -0.4])
    assert env.comparator_losses(2, 4) == pytest.approx([0.7, 0.55, 0.4, 0.4])
    boredom = WeightedTallyingBanditEnv(memory=2, decay=1.0, family="boredom")
    assert boredom.mean_loss(2, 1.0) == pytest.approx(0.7 + 0.3 * 0.5)


def test_repeated_exposure_optimality_by_exhaustive_search():
    # Every action sequence of length 8 on K = 2, m = 2: the best one is "always a*".
    env = WeightedTallyingBanditEnv(n_arms=2, memory=2, decay=0.5, horizon=8, noise=0.0, mu=(0.5, 0.6),
                                    gains=(0.0, 0.4))
    def total(seq):
        return sum(env.mean_loss(a, env.tallies(list(seq[:t]))[a]) for t, a in enumerate(seq))
    best = min(itertools.product(range(2), repeat=8), key=total)
    assert best == (1,) * 8 and env.best_fixed_arm() == 1
    assert total(best) == pytest.approx(env.comparator_losses(1).sum())


def test_seeding_reproducible_and_truncation():
    a, b = WeightedTallyingBanditEnv(horizon=5), WeightedTallyingBanditEnv(horizon=5)
    a.reset(seed=3)
    b.reset(seed=3)
    ra = [a.step(1) for _ in range(5)]
    rb = [b.step(1) for _ in range(5)]
    assert [r[1] for r in ra] == [r[1] for r in rb]
    assert [r[3] for r in ra] == [False] * 4 + [True]


def cpr(T, interleave=False, max_memory=3, memory=3):
    env = WeightedTallyingBanditEnv(horizon=T, memory=memory)
    agent = SuccessiveElimination(3, T, max_memory=max_memory, sigma=0.1, interleave=interleave)
    return run_agent(env, agent, seed=0)["cpr"][-1]


def test_modified_se_regret_is_sublinear_and_standard_se_is_linear():
    short, long = cpr(1000), cpr(8000)
    # 8x the horizon: sqrt growth would be 2.8x; linear 8x
    assert long / short < 3.0
    assert cpr(8000, interleave=True) / cpr(1000, interleave=True) > 6.0
    assert long < cpr(8000, interleave=True)


def test_larger_memory_bound_costs_an_additive_offset():
    assert cpr(2000, max_memory=20) > cpr(2000, max_memory=3)


def test_bad_input():
    with pytest.raises(ValueError, match="n_arms"):
        WeightedTallyingBanditEnv(n_arms=1)
    with pytest.raises(ValueError, match="decay"):
        WeightedTallyingBanditEnv(decay=0.0)
    with pytest.raises(ValueError, match="family"):
        WeightedTallyingBanditEnv(family="fatigue")
    with pytest.raises(ValueError, match="mu"):
        WeightedTallyingBanditEnv(mu=(0.1, 0.2))
    with pytest.raises(TypeError, match="memory"):
        WeightedTallyingBanditEnv(memory=2.5)
    env = WeightedTallyingBanditEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(7)
    agent = SuccessiveElimination(3, 100)
    arm = agent.act()
    with pytest.raises(ValueError, match="arm"):
        agent.update((arm + 1) % 3, 0.5)
    with pytest.raises(ValueError, match="delta"):
        SuccessiveElimination(3, 100, delta=1.5)
