"""The multi-objective, proxy-reward and JSON-like toy tasks."""
import gymnasium
import pytest
import torch

import toy_envs  # noqa: F401  (registers the envs)
from lab.rewards.multi_objective import hypervolume
from toy_envs.multi_objective import MultiObjectiveTask, ProxyRewardTask
from toy_envs.structured import StructuredTask, component_scores, parse_object


def _tokens(task, prompts, rows):
    return torch.tensor([r + [task.pad_id] * (task.max_new_tokens - len(r)) for r in rows])


def test_multi_objective_values_by_hand():
    task = MultiObjectiveTask(n_objectives=3)                 # L = 4, power 2
    d, w, eos = 2, task.wildcard, task.eos_id
    prompts = torch.tensor([[d, task.modes[0]]] * 3)
    responses = _tokens(task, prompts, [[d, d, eos], [w, d, d, d, eos], [eos]])
    obj = task.objectives(prompts, responses)
    assert obj.tolist() == [[0.25, 0.5, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    assert task.correct(prompts, responses).tolist() == [False, True, False]


def test_multi_objective_front_is_non_convex():
    front = MultiObjectiveTask().front()                       # (m/L)², 1 − m/L
    # every interior point lies strictly below the chord x + y = 1 between the two ends
    assert (front[1:-1].sum(-1) < 1).all()
    # ... so no weight vector prefers it: max_w over the ends beats it for every w
    for w1 in torch.linspace(0, 1, 11):
        w = torch.tensor([w1, 1 - w1])
        values = front @ w
        assert values[1:-1].max() <= torch.maximum(values[0], values[-1]) + 1e-6
    assert hypervolume(front, [0, 0]) > 0


def test_proxy_task_overoptimization_lowers_true_reward():
    task = ProxyRewardTask()                                   # θ = 0.25, penalty 2, scale 1.5
    d, k = 2, task.keyword
    prompts = torch.tensor([[d], [d], [d]])
    responses = torch.tensor([[k, k, k, k], [k, d, d, d], [d, d, d, d]])
    proxy, true = task.reward(prompts, responses), task.true_reward(prompts, responses)
    assert proxy.tolist() == pytest.approx([1.5, 0.375 + 0.75, 1.0])
    assert true.tolist() == pytest.approx([0.25 - 2 * 0.75, 1.0, 1.0])
    assert proxy.argmax() == 0 and true.argmin() == 0


def test_structured_verifiers_by_hand():
    ref = {"a": "1", "b": "2"}
    assert component_scores("{a:1,b:2}", ref) == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert component_scores("{a:1}", ref) == pytest.approx([0.5, 1.0, 1.0, 2 / 3, 1.0])
    assert component_scores("x{a:1,b:2", ref) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert component_scores("{a:1,a:1}", ref)[2] == 0.0                      # duplicate key: invalid
    assert component_scores("{a:1,b:2}xxx", ref)[4] == 0.0                   # too long
    assert parse_object("{b:0,a:2}") == {"b": "0", "a": "2"}


def test_structured_task_targets_score_full_marks(generator):
    task = StructuredTask()
    prompts = task.sample_prompts(5, generator)
    targets = _tokens(task, prompts, task.targets(prompts))
    assert torch.all(task.objectives(prompts, targets) == 1.0)
    assert task.reward(prompts, targets).tolist() == [1.0] * 5
    prior = task.template_prior()
    assert prior.shape == (task.max_new_tokens, task.vocab_size) and prior.sum(-1).min() >= 1


def test_tasks_bad_input():
    with pytest.raises(ValueError, match="n_objectives"):
        MultiObjectiveTask(n_objectives=4)
    with pytest.raises(ValueError, match="power"):
        MultiObjectiveTask(power=0)
    with pytest.raises(ValueError, match="threshold"):
        ProxyRewardTask(threshold=2.0)
    with pytest.raises(ValueError, match="n_digits"):
        StructuredTask(n_digits=0)
    with pytest.raises(ValueError, match="responses"):
        MultiObjectiveTask().objectives(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 5), 99))


def test_gym_env_returns_weighted_objectives():
    env = gymnasium.make("toy_envs/MultiObjective-v0", weights=(1.0, 0.0))
    obs, info = env.reset(seed=0)
    digit = int(obs[0])
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step(digit)
    obs, reward, terminated, truncated, info = env.step(1)                   # <eos>
    assert terminated and info["objectives"] == [1.0, 0.0] and reward == pytest.approx(1.0)
