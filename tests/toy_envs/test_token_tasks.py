"""Token-level tasks: batched API (prompts, targets, rewards) and the gymnasium face."""
import gymnasium
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from toy_envs.arithmetic import ArithmeticTask
from toy_envs.strings import StringTask
from toy_envs.token_bandit import TokenBanditTask
from toy_envs.token_tasks import EOS_ID, PAD_ID, make_task


def _encode(task, text):
    tokens, i = [], 0
    names = sorted(task.vocab, key=len, reverse=True)
    while i < len(text):
        tok = next(n for n in names if text.startswith(n, i))
        tokens.append(task.vocab.index(tok))
        i += len(tok)
    return tokens


def test_arithmetic_prompts_targets_and_rewards():
    # Prepare
    task = ArithmeticTask(difficulty=2)
    prompts = torch.tensor([_encode(task, "07+05="), _encode(task, "00+03=")])
    good = _encode(task, "12<eos>") + [PAD_ID]
    half = _encode(task, "13<eos>") + [PAD_ID]               # 2 of 3 target tokens right
    responses = torch.tensor([good, half])
    # Execute
    rewards = task.reward(prompts, responses)
    # Assert
    assert task.targets(prompts) == [_encode(task, "12<eos>"), _encode(task, "3<eos>")]
    assert rewards.tolist() == pytest.approx([1.0, 0.0])      # row 2 answers 13 to "0+3": 0/2
    assert task.correct(prompts, responses).tolist() == [True, False]
    mixed = torch.tensor([half, _encode(task, "3<eos><pad><pad>")])
    assert task.reward(prompts, mixed).tolist() == pytest.approx([2 / 3, 1.0])
    assert ArithmeticTask(difficulty=2, partial_credit=False).reward(prompts, mixed).tolist() == [0.0, 1.0]
    assert task.max_new_tokens == 4 and task.prompt_len == 6


def test_arithmetic_prompts_cover_operands(generator):
    task = ArithmeticTask(max_operand=4)
    prompts = task.sample_prompts(500, generator)
    ops = task.operands(prompts)
    assert prompts.shape == (500, 4) and ops.min() == 0 and ops.max() == 4
    assert task.decode(prompts[0]).endswith("=")


def test_strings_copy_reverse_partial_credit():
    task = StringTask(mode="mixed", difficulty=3)
    prompts = torch.tensor([_encode(task, "Cabc="), _encode(task, "Rabc=")])
    responses = torch.tensor([_encode(task, "abc<eos>"), _encode(task, "cbd<eos>")])
    assert task.reward(prompts, responses).tolist() == pytest.approx([1.0, 0.75])
    assert task.correct(prompts, responses).tolist() == [True, False]
    # an early <eos> is one right token out of four at most
    early = torch.tensor([_encode(task, "a<eos><pad><pad>"), _encode(task, "<eos><pad><pad><pad>")])
    assert task.reward(prompts, early).tolist() == pytest.approx([0.25, 0.0])


def test_response_lengths_stop_at_first_eos():
    task = StringTask()
    responses = torch.tensor([[5, EOS_ID, 0, 0], [5, 6, 7, 8], [EOS_ID, 5, EOS_ID, 0]])
    assert task.response_lengths(responses).tolist() == [2, 4, 1]


def test_token_bandit_closed_form():
    task = TokenBanditTask(probs=(0.1, 0.7, 0.4))
    logits = torch.zeros(1, task.vocab_size, dtype=torch.float64, requires_grad=True)
    j = task.expected_reward(logits)
    (autograd,) = torch.autograd.grad(j.sum(), logits)
    assert j.item() == pytest.approx(1.2 / task.vocab_size)
    assert torch.allclose(task.policy_gradient(logits.detach()), autograd)
    assert task.optimal_arm.tolist() == [task.first_arm + 1]
    prompts = torch.full((4, 1), task.first_context)
    responses = torch.tensor([[task.first_arm + 1], [task.first_arm], [EOS_ID], [task.first_arm + 2]])
    assert task.reward(prompts, responses).tolist() == pytest.approx([0.7, 0.1, 0.0, 0.4])
    assert task.correct(prompts, responses).tolist() == [True, False, False, False]


def test_token_bandit_sampled_rewards_match_probabilities(generator):
    task = TokenBanditTask(n_arms=4, n_contexts=3, difficulty=0.5)
    assert task.arm_probs.min() >= 0.35 - 1e-9 and task.arm_probs.max() <= 0.65 + 1e-9
    prompts = task.sample_prompts(6000, generator)
    responses = torch.full((6000, 1), task.first_arm)
    r = task.reward(prompts, responses, generator)
    for c in range(3):
        sel = task.context(prompts) == c
        assert r[sel].mean().item() == pytest.approx(task.arm_probs[c, 0].item(), abs=0.05)


def test_make_task_and_bad_inputs():
    assert make_task("reverse", difficulty=2).difficulty == 2
    with pytest.raises(KeyError, match="arithmetic"):
        make_task("chess")
    with pytest.raises(ValueError, match="difficulty"):
        ArithmeticTask(difficulty=0)
    with pytest.raises(ValueError, match="max_operand"):
        ArithmeticTask(difficulty=1, max_operand=10)
    with pytest.raises(ValueError, match="difficulty"):
        TokenBanditTask(difficulty=1.0)
    task = ArithmeticTask()
    with pytest.raises(ValueError, match="responses"):
        task.reward(torch.zeros(2, 4, dtype=torch.long), torch.full((2, 3), 99))
    with pytest.raises(ValueError, match="rows"):
        task.reward(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long))


@pytest.mark.parametrize("env_id", ["toy_envs/Arithmetic-v0", "toy_envs/StringReverse-v0",
                                    "toy_envs/TokenBandit-v0"])
def test_env_check_and_episode(env_id):
    env = gymnasium.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    task = env.unwrapped.task
    target = task.targets(torch.as_tensor(obs[None, :task.prompt_len])) if hasattr(task, "operands") or \
        isinstance(task, StringTask) else [[int(task.optimal_arm[0])]]
    total, done, steps = 0.0, False, 0
    for token in target[0]:
        obs, reward, done, _, info = env.step(token)
        total += reward
        steps += 1
    assert done and info["correct"] and steps == len(target[0])
    if env_id != "toy_envs/TokenBandit-v0":
        assert total == 1.0
