"""HPT: the per-prompt SFT/RL switch and its limiting settings."""
import numpy as np
import pytest
import torch

from lab.rl.core import clipped_policy_loss, aggregate
from lab.rl.hpt import hpt

G, T, TD = 4, 3, 2


def _batch(rewards):
    n = len(rewards)
    logprobs = torch.zeros(n, T, requires_grad=True)
    demo = torch.full((n // G, TD), -2.0, requires_grad=True)
    adv = torch.tensor(rewards) - torch.tensor(rewards).view(-1, G).mean(-1).repeat_interleave(G)
    return logprobs, demo, adv, torch.ones(n, T), torch.tensor(rewards)


def test_spec_example_switch():
    # Prepare: n = 8, gate 0: prompt 0 has 0/8 correct (SFT), prompt 1 has 1/8 correct (RL)
    counts = torch.tensor([0.0, 1.0])
    logprobs = torch.zeros(16, T, requires_grad=True)
    demo = torch.full((2, TD), -2.0, requires_grad=True)
    adv = torch.zeros(16)
    adv[8] = 0.875
    adv[9:] = -0.125
    # Execute
    loss, metrics = hpt(logprobs, None, adv, torch.ones(16, T), group_size=8, correct_counts=counts,
                        demo_logprobs=demo, demo_mask=torch.ones(2, TD))
    loss.backward()
    # Assert: SFT term = token-mean NLL of prompt 0's demo (2.0); RL only on prompt 1's rollouts
    assert metrics["hpt/sft_frac"] == 0.5
    assert metrics["hpt/sft_loss"] == pytest.approx(2.0)
    assert torch.all(logprobs.grad[:8] == 0) and torch.any(logprobs.grad[8:] != 0)
    assert demo.grad[0].tolist() == pytest.approx([-0.5, -0.5]) and torch.all(demo.grad[1] == 0)
    # RL: seq_mean_token_sum_norm = sum(-A)/(B*T) over prompt 1 rows (sum A = 0 -> 0)
    assert metrics["hpt/rl_loss"] == pytest.approx(0.0, abs=1e-7)
    assert logprobs.grad[8, 0].item() == pytest.approx(-0.875 / (16 * T))


def test_gate_minus_one_is_pure_rl_and_equals_no_demonstrations():
    logprobs, demo, adv, mask, rewards = _batch([0.0, 0, 0, 0, 1, 0, 1, 0])
    with_demo, m = hpt(logprobs, None, adv, mask, rewards=rewards, group_size=G, demo_logprobs=demo,
                       gate=-1)
    without, _ = hpt(logprobs, None, adv, mask)
    assert m["hpt/sft_frac"] == 0.0
    assert with_demo.item() == pytest.approx(without.item())


def test_large_gate_is_pure_sft():
    logprobs, demo, adv, mask, rewards = _batch([1.0, 1, 1, 1, 1, 0, 1, 0])
    loss, m = hpt(logprobs, None, adv, mask, rewards=rewards, group_size=G, demo_logprobs=demo,
                  gate=G, sft_coef=0.3)
    loss.backward()
    assert m["hpt/sft_frac"] == 1.0 and m["num_tokens"] == 0.0
    assert loss.item() == pytest.approx(0.3 * 2.0)
    assert torch.all(logprobs.grad == 0)


def test_rl_part_is_the_unclipped_importance_weighted_gradient():
    logprobs = torch.randn(4, T).requires_grad_()
    old = (logprobs - 1.0).detach()  # ratio e: far outside any clip range
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, _ = hpt(logprobs, old, adv, torch.ones(4, T), agg="token_mean")
    rho = torch.exp(logprobs - old)
    ref = aggregate(-adv[:, None] * rho, torch.ones(4, T), "token_mean")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    clipped, _ = hpt(logprobs, old, adv, torch.ones(4, T), agg="token_mean", clip=True)
    ref_clip, _ = clipped_policy_loss(logprobs, old, adv, torch.ones(4, T))
    assert clipped.item() == pytest.approx(ref_clip.item(), rel=1e-6)


def test_prompt_without_demonstration_stays_on_rl():
    logprobs, demo, adv, mask, rewards = _batch([0.0] * 8)
    demo_mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])   # prompt 1 has no demonstration
    loss, m = hpt(logprobs, None, adv, mask, rewards=rewards, group_size=G, demo_logprobs=demo,
                  demo_mask=demo_mask)
    assert m["hpt/sft_frac"] == 0.5 and m["num_tokens"] == 4 * T and torch.isfinite(loss)


def test_bad_inputs_name_the_argument():
    logprobs, demo, adv, mask, rewards = _batch([0.0] * 8)
    with pytest.raises(ValueError, match="demo_logprobs"):
        hpt(logprobs, None, adv, mask, rewards=rewards, group_size=2, demo_logprobs=demo)
    with pytest.raises(ValueError, match="correct_counts"):
        hpt(logprobs, None, adv, mask, group_size=G, demo_logprobs=demo)
    with pytest.raises(TypeError, match="gate"):
        hpt(logprobs, None, adv, mask, gate=0.5)
    with pytest.raises(ValueError, match="sft_coef"):
        hpt(logprobs, None, adv, mask, sft_coef=-1.0)


# ---- behaviour on the toy tasks -------------------------------------------------------------
@pytest.mark.slow
def test_hpt_switches_from_sft_to_rl_and_its_limits_are_pure_rl_and_pure_sft():
    # exact-match reverse task: a fresh policy almost never solves a prompt, so RL alone gets no
    # signal; HPT imitates the demonstrations and hands prompts to RL as it starts to solve them
    from lab.experiments import run

    hybrid = run("hybrid_post_training", gate=0)
    pure_rl = run("hybrid_post_training", gate=-1)
    pure_sft = run("hybrid_post_training", gate=8)
    assert hybrid["sft_frac"][0] == 1.0 and hybrid["sft_frac"][-5:].mean() < 0.6
    assert set(pure_rl["sft_frac"].tolist()) == {0.0} and set(pure_sft["sft_frac"].tolist()) == {1.0}
    assert pure_rl["accuracy"][-5:].mean() < 0.02
    assert hybrid["accuracy"][-5:].mean() > 0.1 and pure_sft["accuracy"][-5:].mean() > 0.1


def test_hpt_in_policy_optimization_without_demonstrations_is_its_rl_part():
    # no demonstrations: every prompt trains with RL, the unclipped −ρA with Dr. GRPO's
    # aggregation; with one epoch ρ ≡ 1, so the run is Dr. GRPO's step for step
    from lab.experiments import run

    kw = dict(advantage="dr_grpo", task="reverse(difficulty=2)", steps=5)
    h = run("policy_optimization", loss="hpt", **kw)
    dr = run("policy_optimization", loss="dr_grpo", **kw)
    assert np.all(h["hpt/sft_frac"] == 0)
    assert np.array_equal(h["reward"], dr["reward"]) and np.allclose(h["loss"], dr["loss"])


def test_segment_panel_hpt_view():
    from lab.viz.lessons import segment_panel

    p = segment_panel("hpt", run=False)
    p.controls["steps"].value = 5
    assert p.last_error is None and p.result["sft_frac"][0] == 1.0


def test_correct_means_reward_strictly_above_one_half_by_default():
    from lab.rl.hpt import hpt_batch_inputs
    rewards = torch.tensor([0.6, 0.5, 0.4, 1.0])
    assert hpt_batch_inputs(rewards, group_size=4)["group_correct"].tolist() == [2.0] * 4
    assert hpt_batch_inputs(rewards, group_size=4, threshold=0.7)["group_correct"].tolist() == [1.0] * 4
