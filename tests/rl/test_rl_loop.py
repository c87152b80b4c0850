"""Rollouts and the policy_optimization loop: one loop for every (estimator, loss) pair."""
import dataclasses

import numpy as np
import pytest
import torch

import lab.experiments as E
from lab.experiments.policy import PolicyConfig
from lab.models.policy import TabularPolicy
from lab import registry
from lab.registry import available, register
from lab.rl.rollout import pad_responses, rollout, token_rewards
from toy_envs.token_tasks import make_task


def test_rollout_groups_padding_and_rewards(generator):
    task = make_task("reverse", difficulty=2)
    policy = TabularPolicy.for_task(task, init_std=1.0, generator=generator)
    ro = rollout(policy, task, n_prompts=3, group_size=4, generator=generator)
    assert ro.tokens.shape == (12, 3) and ro.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(ro.prompts[0], ro.prompts[3]) and ro.group_size == 4
    assert torch.equal(ro.lengths, task.response_lengths(ro.tokens))
    assert torch.allclose(ro.rewards, task.reward(ro.prompts, ro.tokens))
    batch = ro.batch()
    assert {"rewards", "group_ids", "mask", "old_logprobs", "token_rewards", "lengths"} <= set(batch)
    assert torch.allclose(batch["token_rewards"].sum(-1), ro.rewards)


def test_token_rewards_and_padding_helpers():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert token_rewards(torch.tensor([2.0, 5.0, 1.0]), mask).tolist() == [[0, 2, 0], [0, 0, 0], [0, 0, 1]]
    tokens, m = pad_responses([[4, 1], [], [3]], pad_id=0)
    assert tokens.tolist() == [[4, 1], [0, 0], [3, 0]] and m.sum(-1).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="width"):
        pad_responses([[1, 2, 3]], width=2)


@pytest.mark.parametrize("advantage,loss", [
    ("grpo", "grpo"), ("dr_grpo", "dr_grpo"), ("rloo", "reinforce"), ("reinforce_baseline", "dapo"),
    ("gae", "ppo"), ("grpo(std='population')", "gspo"), ("reinforce_baseline(whiten=True)", "ppo"),
])
def test_every_pair_runs_through_one_loop(advantage, loss):
    h = E.run("policy_optimization", advantage=advantage, loss=loss, steps=3, n_prompts=4, group_size=4,
              epochs=2, minibatches=2)
    for key in ("reward", "accuracy", "entropy", "clip_frac", "kl", "adv_mean", "adv_std",
                "response_length", "loss", "greedy_accuracy"):
        assert key in h, key
    assert len(h["reward"]) == 3 and all(torch.isfinite(torch.tensor(h["loss"])))
    adv = h.artifacts["last_batch"]["advantages"]
    assert len(adv) == 16


def test_loop_is_deterministic_and_config_overrides_reach_the_loss():
    a = E.run("policy_optimization", steps=3)
    b = E.run("policy_optimization", steps=3)
    assert a.rows == b.rows
    # ε = 0 clips every moved ratio: after the first minibatch, later ones see clipping
    h = E.run("policy_optimization", steps=2, epochs=2, minibatches=2, clip_eps_low=0.0, clip_eps_high=0.0)
    assert max(h["clip_frac"]) > 0


def test_stateful_estimator_class_is_instantiated_once():
    @register("advantage", "_test_counting_baseline", paper="test fixture")
    class CountingBaseline:
        """Advantage = reward minus the running mean of all rewards seen so far (a stateful estimator)."""

        def __init__(self, momentum: float = 0.5):
            self.momentum, self.mean, self.calls = momentum, 0.0, 0

        def __call__(self, rewards, *, step):
            self.calls += 1
            assert self.calls == step + 1                      # the same instance every step
            advantages = rewards - self.mean
            self.mean = self.momentum * self.mean + (1 - self.momentum) * float(rewards.mean())
            return advantages, {"adv_mean": float(advantages.mean())}

    try:
        h = E.run("policy_optimization", advantage="_test_counting_baseline(momentum=0.9)", loss="reinforce",
                  steps=4)
    finally:
        registry._REGISTRY["advantage"].pop("_test_counting_baseline")   # keep the registry clean
    assert len(h["reward"]) == 4


def test_bad_config_raises():
    with pytest.raises(KeyError, match="grpo"):
        E.run("policy_optimization", loss="no_such_loss")
    with pytest.raises(KeyError, match="tabular"):
        E.run("policy_optimization", model="mlp")
    with pytest.raises(ValueError, match="group_size"):
        E.run("policy_optimization", group_size=0)
    with pytest.raises(TypeError, match="foo"):
        E.run("policy_optimization", loss="grpo(foo=1)")


def test_default_config_is_small():
    cfg = PolicyConfig()
    assert cfg.steps * cfg.n_prompts * cfg.group_size <= 4000
    assert {f.name for f in dataclasses.fields(cfg)} >= {"advantage", "loss", "group_size", "clip_eps_low",
                                                        "clip_eps_high", "beta", "temperature", "lr"}
    assert {"grpo", "dr_grpo", "rloo", "gae", "reinforce_baseline"} <= set(available("advantage"))


def test_advantage_calculator_and_figures():
    from lab.viz.rl import CalculatorConfig, advantage_calculator, calculator_figures, policy_figures

    result = advantage_calculator(CalculatorConfig(r0=True, r1=False, r2=False, r3=True, group_size=4,
                                                   lengths=(2, 4, 3, 1)))
    assert result["advantages"]["reinforce_baseline"] == [0.5, -0.5, -0.5, 0.5]
    assert result["advantages"]["rloo"] == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # one token of a response of length L: token mean 1/ΣL, per-sequence mean 1/(G·L)
    assert result["weights"]["token_mean"] == pytest.approx([0.1] * 4)
    assert result["weights"]["seq_mean_token_mean"] == pytest.approx([1 / 8, 1 / 16, 1 / 12, 1 / 4])
    assert result["weights"]["seq_mean_token_sum_norm"] == pytest.approx([1 / 16] * 4)
    assert len(calculator_figures(result)) == 2
    h = E.run("policy_optimization", steps=2)
    figs = policy_figures(h)
    shown = figs[1].data[0]                       # one-token bandit: one bar per response, not a heatmap
    assert len(figs) == 2 and shown.type == "bar" and len(shown.y) == 64
    with pytest.raises(ValueError, match="group_size"):
        advantage_calculator(CalculatorConfig(group_size=1))


def test_compatible_lists_what_the_loop_can_feed():
    from lab.experiments.policy import compatible

    assert {"grpo", "rloo", "gae", "dr_grpo", "reinforce_baseline"} <= set(compatible("advantage"))
    assert {"grpo", "ppo", "dapo", "gspo", "reinforce", "dr_grpo"} <= set(compatible("policy_loss"))


def test_method_specific_metrics_reach_the_history():
    # GRPO-D reports its KL coefficient as "grpo_d/beta"; the loop logs every number a loss or an
    # estimator reports, so the schedule is visible without a per-method branch.
    h = E.run("policy_optimization", loss="grpo_d", steps=4)
    beta = h["grpo_d/beta"]
    assert len(beta) == 4 and np.all(np.isfinite(beta))
    assert "adv_mean" in h and "clip_frac" in h and "pg_loss" in h


@pytest.mark.parametrize("loss,advantage", [("grao", "grpo"), ("hpt", "dr_grpo")])
def test_demonstrations_reach_the_imitating_losses(loss, advantage):
    # demonstrations=True scores the task's reference answers, one row per group of the minibatch;
    # GRAO's imitation/alignment terms and HPT's SFT branch then learn from them, so the sampled
    # policy improves much faster than the same loss on its own rollouts (30 steps, tabular policy)
    common = dict(task="arithmetic(max_operand=4)", loss=loss, advantage=advantage, steps=30, n_prompts=8,
                  group_size=8, lr=0.1, eval_prompts=200, minibatches=2)
    alone = E.run("policy_optimization", **common)
    taught = E.run("policy_optimization", demonstrations=True, **common)
    assert taught["greedy_accuracy"][-1] == 1.0
    assert taught["accuracy"][-5:].mean() > alone["accuracy"][-5:].mean() + 0.08
    key = "grao/imitation_logprob" if loss == "grao" else "hpt/sft_frac"
    assert taught[key][0] != alone[key][0]          # the demonstrations reached the loss


def test_demonstrations_need_reference_answers():
    with pytest.raises(ValueError, match="reference answers"):
        E.run("policy_optimization", task="token_bandit", demonstrations=True, steps=1)


def test_entropy_bonus_keeps_the_policy_spread_out():
    # − c_H · mean(H) in every update: on the token bandit the sampled entropy after 60 steps grows
    # with c_H (0.69, 0.84, 1.39 nats for c_H = 0, 0.05, 0.2; log 8 = 2.08 is uniform), and the
    # greedy arm is still the best one
    runs = [E.run("policy_optimization", entropy_coef=c, steps=60, lr=0.1) for c in (0.0, 0.05, 0.2)]
    entropies = [h["entropy"][-10:].mean() for h in runs]
    assert entropies[0] < entropies[1] < entropies[2] and entropies[2] > entropies[0] + 0.4
    assert all(h["greedy_accuracy"][-1] == 1.0 for h in runs)
    with pytest.raises(ValueError, match="entropy_coef"):
        E.run("policy_optimization", entropy_coef=-0.1, steps=1)


def test_token_selector_reduces_the_loss_mask_on_its_schedule():
    # D³S keeps N_t of the rollouts (50% -> 100% over the run's steps); on the one-token bandit each
    # kept rollout keeps its single token, so the loss sees 32 of 64 tokens first and all at the end
    h = E.run("policy_optimization", token_selector="d3s", steps=40, lr=0.1)
    assert h["num_tokens"][0] == 32 and h["num_tokens"][-1] >= 62
    assert h["d3s/n_frac"][0] == 0.5 and h["d3s/n_frac"][-1] == pytest.approx(0.5 + 0.5 * 39 / 40)
    assert np.all(np.diff(h["num_tokens"]) >= 0)
    assert h["greedy_accuracy"][-1] == 1.0                                  # it still learns
    with pytest.raises(TypeError, match="logits"):                         # not a mask selector
        E.run("policy_optimization", token_selector="adaptive_temperature", steps=1)


def test_token_sampler_picks_rollout_tokens_and_keeps_the_first_ratio_at_one():
    # HAPO's adaptive temperature with τ = 0 is plain sampling at T: the same run, token for token
    plain = E.run("policy_optimization", steps=20, lr=0.1)
    same = E.run("policy_optimization", steps=20, lr=0.1, token_sampler="adaptive_temperature(tau=0.0)")
    assert plain["reward"].tolist() == same["reward"].tolist() and plain["loss"].tolist() == same["loss"].tolist()
    # τ = 0.5 changes which tokens are drawn, but ℓ^old is π_T's: one on-policy update has ratio 1
    hot = E.run("policy_optimization", task="arithmetic(max_operand=4)", steps=10, lr=0.1,
                token_sampler="adaptive_temperature(tau=0.5)")
    assert "adaptive_temperature/pivot" in hot                              # update() ran on each batch
    assert np.allclose(hot["ratio_max"], 1.0, atol=1e-5) and np.allclose(hot["ratio_min"], 1.0, atol=1e-5)
    with pytest.raises(TypeError, match="select"):
        E.run("policy_optimization", token_sampler="d3s", steps=1)
