"""DAPO's four parts, each wired through a generic switch of ``policy_optimization``.

clip-higher + token mean (``loss="dapo"``, tested in test_rl_algorithms), dynamic sampling
(``group_filter="dynamic_sampling"``), the soft overlong punishment
(``reward_shaping="overlong_penalty"``) and overlong filtering (``token_selector="overlong_filter"``).
"""
import numpy as np
import pytest
import torch

from lab.experiments import run
from lab.registry import info, make
from lab.rewards.overlong import overlong_penalty, overlong_reward
from lab.sampling.dynamic_sampling import DynamicSampling
from lab.sampling.overlong_filter import OverlongFilter, truncated_rows

EXACT = "reverse(difficulty=2, alphabet=3, partial_credit=False)"
SLACK = "reverse(difficulty=2, alphabet=3, slack=3)"


# ---------------------------------------------------------------- registered where the kind lives
@pytest.mark.parametrize("kind, name, module", [
    ("sampler", "dynamic_sampling", "lab.sampling.dynamic_sampling"),
    ("sampler", "overlong_filter", "lab.sampling.overlong_filter"),
    ("reward", "overlong_penalty", "lab.rewards.overlong"),
])
def test_registered_under_its_kind_with_the_paper(kind, name, module):
    entry = info(kind, name)
    assert entry.module == module and entry.arxiv == "2503.14476"


# ---------------------------------------------------------------- the soft overlong punishment
def test_overlong_reward_hand_computed():
    # budget 6 (the mask's width), cache 3: lengths 3 -> 0, 4 -> −1/3, 5 -> −2/3, 6 -> −1
    mask = torch.arange(6)[None, :] < torch.tensor([3, 4, 5, 6])[:, None]
    shaped, m = overlong_reward(torch.tensor([1.0, 1.0, 0.5, 0.0]), mask=mask, cache_length=3)
    assert shaped.tolist() == pytest.approx([1.0, 2 / 3, 0.5 - 2 / 3, -1.0])
    assert m["overlong/frac"] == 0.75
    # explicit L_max, K reward columns, factor
    shaped, _ = overlong_reward(torch.ones(2, 2), lengths=torch.tensor([1, 9]), max_length=8,
                                cache_length=2, factor=0.5)
    assert shaped.tolist() == [[1.0, 1.0], [0.5, 0.5]]
    # default cache: ⌈L_max/5⌉ (DAPO's 4096 of 20480)
    p, _ = overlong_penalty(torch.tensor([16384, 18432]), max_length=20480, cache_length=4096)
    d, _ = overlong_reward(torch.zeros(2), lengths=torch.tensor([16384, 18432]), max_length=20480)
    assert d.tolist() == pytest.approx(p.tolist())


@pytest.mark.parametrize("kwargs, match", [
    ({"rewards": torch.ones(2)}, "lengths"),
    ({"rewards": torch.ones(2), "lengths": torch.tensor([1, 2])}, "max_length"),
    ({"rewards": torch.ones(2), "lengths": torch.tensor([1, 2, 3]), "max_length": 4}, "lengths"),
    ({"rewards": torch.ones(2), "lengths": torch.tensor([1, -2]), "max_length": 4}, "lengths"),
    ({"rewards": torch.ones(2), "lengths": torch.tensor([1, 2]), "max_length": 4, "cache_length": 5},
     "cache_length"),
])
def test_overlong_reward_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        overlong_reward(**kwargs)


def test_overlong_penalty_shortens_responses_in_the_loop():
    # reverse 2 letters with 3 spare positions: the penalty (cache 3: from the answer's length on)
    # makes rambling cost reward, so responses end shorter than with the task reward alone
    ends = {}
    for shaping in (None, "overlong_penalty(cache_length=3)"):
        ends[shaping] = [run("policy_optimization", task=SLACK, loss="dapo", reward_shaping=shaping,
                             steps=30, lr=0.2, seed=s)["response_length"][-5:].mean() for s in range(3)]
    assert np.all(np.array(ends["overlong_penalty(cache_length=3)"]) < np.array(ends[None]) - 0.3)


# ---------------------------------------------------------------- overlong filtering
def test_overlong_filter_masks_truncated_rows():
    tokens = torch.tensor([[5, 6, 1], [5, 6, 7], [4, 1, 0], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    new, m = OverlongFilter().select(mask, token_ids=tokens)
    assert new.tolist() == [[True] * 3, [False] * 3, [True, True, False], [False] * 3]
    assert m["overlong_filter/truncated_frac"] == pytest.approx(1 / 3)
    assert truncated_rows(tokens, mask, eos_id=7).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="token_ids"):
        OverlongFilter().select(mask, token_ids=tokens[:, :2])


def test_overlong_filter_in_the_loop_drops_exactly_the_truncated_responses():
    h = run("policy_optimization", task=SLACK, loss="dapo", token_selector="overlong_filter", steps=1)
    last = h.artifacts["last_batch"]
    no_eos = np.mean(["<eos>" not in t for t in last["texts"]])
    assert h["overlong_filter/truncated_frac"][-1] == pytest.approx(no_eos)
    assert 0 < no_eos < 1


# ---------------------------------------------------------------- dynamic sampling
def test_dynamic_sampling_keeps_the_groups_with_spread():
    sampler = make("sampler", "dynamic_sampling", max_rounds=3)
    keep, m = sampler.select(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.2, 0.7]), group_size=2)
    assert keep.tolist() == [1, 3] and m["dynamic_sampling/keep_frac"] == 0.5
    assert m["frac_zero_std_groups"] == 0.5
    state = sampler.state_dict()
    other = DynamicSampling()
    other.load_state_dict(state)
    assert other.state_dict() == state == {"max_rounds": 3, "seen": 4, "kept": 2}
    with pytest.raises(ValueError, match="max_rounds"):
        DynamicSampling(max_rounds=0)


def test_dynamic_sampling_refills_the_batch_with_informative_groups():
    # exact match on a fresh policy: most groups are all-wrong (no GRPO gradient). Dynamic sampling
    # rolls out more prompts and trains on groups with spread only; plain GRPO trains on zeros
    plain = run("policy_optimization", task=EXACT, loss="dapo", steps=6, lr=0.2)
    dyn = run("policy_optimization", task=EXACT, loss="dapo", steps=6, lr=0.2,
              group_filter="dynamic_sampling(max_rounds=4)")
    assert np.all(plain["rollouts"] == 64)
    assert np.all(dyn["rollouts"] > 64) and np.all(dyn["rollouts"] <= 4 * 64)
    # the trained batch: fewer zero-spread groups; only the filled share can have none
    assert np.all(dyn["frac_zero_std_groups"] <= dyn["group_filter/filled_frac"] + 1e-9)
    assert dyn["frac_zero_std_groups"].mean() < plain["frac_zero_std_groups"].mean()


def test_dynamic_sampling_learns_where_plain_grpo_stalls():
    # 20 steps on exact-match reversal, 3 seeds: DAPO with dynamic sampling reaches a greedy
    # accuracy DAPO without it does not (most of its batches are all-wrong groups: no gradient)
    for seed in range(3):
        plain = run("policy_optimization", task=EXACT, loss="dapo", steps=20, lr=0.2, seed=seed)
        dyn = run("policy_optimization", task=EXACT, loss="dapo", steps=20, lr=0.2, seed=seed,
                  group_filter="dynamic_sampling(max_rounds=4)")
        assert dyn["greedy_accuracy"][-1] > plain["greedy_accuracy"][-1] + 0.15


def test_one_round_never_refills_and_the_batch_keeps_its_size():
    h = run("policy_optimization", task=EXACT, loss="dapo", steps=2,
            group_filter="dynamic_sampling(max_rounds=1)")
    assert np.all(h["rollouts"] == 64) and np.all(h["group_filter/rounds"] == 1)
    assert len(h.artifacts["last_batch"]["rewards"]) == 64


def test_group_filter_must_select_groups():
    with pytest.raises(TypeError, match="group_filter"):
        run("policy_optimization", steps=1, group_filter="d3s")
