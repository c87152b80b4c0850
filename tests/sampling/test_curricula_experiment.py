"""The curriculum and VAS experiments: samplers in a GRPO loop on a mixture of arithmetic sources."""
import numpy as np
import pytest
import torch

from lab.experiments import run
from lab.experiments.curricula import (
    CurriculumConfig, compare_curricula, load_sources, mixture_rollout, take_groups,
)
from lab.models.policy import TabularPolicy
from lab.registry import available
from lab.viz.curricula import curriculum_figure, vas_figure

FAST = dict(steps=5, pool_size=8, n_prompts=4, group_size=4)


def test_samplers_are_registered():
    assert {"difficulty_filter", "dump", "vade", "vas"} <= set(available("sampler"))


def test_mixture_rollout_scores_each_prompt_by_its_source():
    tasks = load_sources(("arithmetic(max_operand=1)", "arithmetic(max_operand=9)"))
    g = torch.Generator().manual_seed(0)
    pool = torch.cat([t.sample_prompts(3, g) for t in tasks])
    pool_source = torch.tensor([0, 0, 0, 1, 1, 1])
    policy = TabularPolicy.for_task(tasks[1], init_std=1.0, generator=g)
    ro, order = mixture_rollout(policy, tasks, pool, pool_source, torch.tensor([4, 0, 5]), 2,
                                temperature=1.0, generator=g)
    assert order.tolist() == [0, 4, 5]                                   # grouped by source
    assert torch.equal(ro.prompts[::2], pool[order])
    assert ro.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(ro.rewards, tasks[1].reward(ro.prompts, ro.tokens))
    sub = take_groups(ro, torch.tensor([2, 0]))
    assert torch.equal(sub.prompts[::2], pool[[5, 0]]) and sub.group_ids.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("sampler", ["uniform", "dump", "vade", "difficulty_filter(low=0.1, high=0.9)"])
def test_each_sampler_trains_and_logs_the_lesson_metrics(sampler):
    h = run("curriculum", sampler=sampler, **FAST)
    weights = h["weights"]
    assert weights.shape[1] == 3 and np.allclose(weights.sum(1), 1.0)
    assert len(h["eval_accuracy"]) >= 1 and h["source_accuracy"].shape[1] == 3
    assert np.isfinite(h["reward"]).all() and (h["rollouts"] > 0).all()
    if sampler == "uniform":
        assert h["rollouts"][-1] == 5 * 4 * 4
    if sampler.startswith("difficulty_filter"):
        assert (h["frac_zero_std_groups"] == 0).all()                   # kept groups carry a signal
        assert h["rollouts"][-1] > 5 * 4 * 4                            # paid for with extra rollouts
    if sampler == "dump":
        assert np.allclose(h["dump_weights"].sum(1), 1.0)
        assert sum(h.artifacts["sampler_state"]["counts"]) == h["groups"].sum() * 4


def test_compare_curricula_and_figures():
    runs = compare_curricula(CurriculumConfig(sampler="vade", **FAST))
    assert list(runs) == ["vade", "uniform"]
    fig = curriculum_figure(runs)
    assert len(fig.data) >= 2 * (2 + 2 + 3 + 3)
    h = run("value_augmented_sampling", steps=3, betas=(0.0, 1.0), eval_prompts=4)
    assert len(vas_figure(h).data) == 3


@pytest.mark.parametrize("changes, error, match", [
    (dict(sampler="random"), KeyError, "valid"),
    (dict(sources=("arithmetic(max_operand=4)", "arithmetic(difficulty=2)")), ValueError, "sources"),
    (dict(sources=()), ValueError, "sources"),
    (dict(n_prompts=100), ValueError, "n_prompts"),
    (dict(steps=0), ValueError, "steps"),
    (dict(lr=-1.0), ValueError, "lr"),
])
def test_bad_config_is_rejected(changes, error, match):
    with pytest.raises(error, match=match):
        run("curriculum", **changes)


def test_filter_that_keeps_nothing_skips_the_update_without_failing():
    h = run("curriculum", sampler="difficulty_filter(low=0.99, high=1.0)", max_rounds=2, **FAST)
    assert (h["groups"] == 0).all() and (h["keep_frac"] == 0).all()
    assert h["rollouts"][-1] > 0


def test_dump_moves_weight_off_the_zero_advantage_source_and_keeps_exploring_it():
    # the strict-verifier source (index 2) starts all-wrong: |A| = 0 there
    h = run("curriculum", sampler="dump")
    late = h["dump_weights"][-10:].mean(0)
    assert late[2] < 0.15 < min(late[0], late[1])
    assert h.artifacts["sampler_state"]["counts"][2] > 0
    assert h["frac_zero_std_groups"].mean() < run("curriculum", sampler="uniform")["frac_zero_std_groups"].mean()
