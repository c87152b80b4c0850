"""COPO: consistency entropy, global advantage, blending and its limits."""
import math

import numpy as np
import pytest
import torch

from lab.rl.copo import answer_labels, consistency_entropy, copo_advantage, copo_loss
from lab.rl.core import clipped_policy_loss, group_normalize

# three prompts, G = 4: all correct with one answer; all wrong with four answers; half right
REWARDS = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0])
ANSWERS = torch.tensor([3, 3, 3, 3, 5, 6, 7, 8, 3, 4, 3, 4])


def test_consistency_entropy_in_bits():
    index = torch.arange(12) // 4
    h = consistency_entropy(ANSWERS, index, 3)
    assert h.tolist() == pytest.approx([0.0, 2.0, 1.0])  # log2 G for all-distinct answers


def test_hand_computed_blend():
    # Prepare: group means c = (1, 0, 0.5) -> global A = (1, -1, 0) (unbiased std 0.5);
    # H = (0, 2, 1) bits -> w = sigmoid(20 (H - 0.5)) ~ (0, 1, 1)
    # Execute
    adv, metrics = copo_advantage(REWARDS, group_size=4, answers=ANSWERS)
    # Assert: the consistent all-correct group learns from the global signal (GRPO gives 0)
    w0 = 1 / (1 + math.exp(10))
    assert adv[:4].tolist() == pytest.approx([(1 - w0) * 0.9999980] * 4, abs=1e-5)
    assert adv[4:8].tolist() == pytest.approx([0.0] * 4, abs=1e-4)
    assert adv[8:].tolist() == pytest.approx([0.866, -0.866, 0.866, -0.866], abs=1e-3)
    assert metrics["copo/entropy"] == pytest.approx(1.0)


def test_soft_forced_sends_zero_local_groups_to_the_global_loss():
    adv, _ = copo_advantage(REWARDS, group_size=4, answers=ANSWERS, blend="soft_forced")
    assert adv[4:8].tolist() == pytest.approx([-1.0] * 4, abs=1e-4)


@pytest.mark.parametrize("kwargs", [dict(blend="local"), dict(rho=-1e3), dict(gamma=1e4, rho=-0.1)])
def test_local_limit_is_grpo(kwargs):
    adv, _ = copo_advantage(REWARDS, group_size=4, answers=ANSWERS, **kwargs)
    grpo, _ = group_normalize(REWARDS, group_size=4)
    assert torch.allclose(adv, grpo, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(blend="global"), dict(rho=1e3)])
def test_global_limit_gives_one_advantage_per_prompt(kwargs):
    adv, _ = copo_advantage(REWARDS, group_size=4, answers=ANSWERS, **kwargs)
    assert adv.tolist() == pytest.approx([1.0] * 4 + [-1.0] * 4 + [0.0] * 4, abs=1e-5)


def test_answers_default_to_the_response_tokens():
    tokens = torch.tensor([[5, 1, 0], [5, 1, 0], [6, 1, 0], [5, 1, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]])
    labels = answer_labels(4, token_ids=tokens, mask=mask)
    assert labels[0] == labels[1] == labels[3] and labels[2] != labels[0]  # padding ignored


def test_loss_blend_equals_blended_advantage_on_policy():
    logprobs = torch.randn(12, 5, requires_grad=True)
    mask = torch.ones(12, 5)
    grpo, _ = group_normalize(REWARDS, group_size=4)
    loss, _ = copo_loss(logprobs, None, grpo, mask, rewards=REWARDS, group_size=4, answers=ANSWERS)
    (g_loss,) = torch.autograd.grad(loss, logprobs)
    blended, _ = copo_advantage(REWARDS, group_size=4, answers=ANSWERS)
    ref, _ = clipped_policy_loss(logprobs, None, blended, mask, agg="seq_mean_token_mean")
    (g_ref,) = torch.autograd.grad(ref, logprobs)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(g_loss, g_ref, atol=1e-6)


def test_loss_blend_differs_from_blended_advantage_when_signs_disagree_and_ratio_clips():
    # one prompt with mixed answers (w = 1/2 at H = rho) where the local A is +0.87 on row 0 and
    # the global A of the (lower-accuracy) prompt is -1; a large ratio clips only the positive term
    rewards = torch.tensor([1.0, 0, 1, 1, 0, 0, 0, 1])
    answers = torch.tensor([1, 2, 1, 1, 2, 2, 2, 1])
    grpo, _ = group_normalize(rewards, group_size=4)
    logprobs = torch.zeros(8, 1, requires_grad=True)
    old = torch.full((8, 1), -1.0)  # ratio e = 2.7 > 1.2
    kw = dict(rewards=rewards, group_size=4, answers=answers, rho=0.811278, agg="token_mean")
    loss, _ = copo_loss(logprobs, old, grpo, torch.ones(8, 1), **kw)
    blended, _ = copo_advantage(rewards, group_size=4, answers=answers, rho=0.811278)
    ref, _ = clipped_policy_loss(logprobs, old, blended, torch.ones(8, 1))
    assert abs(loss.item() - ref.item()) > 1e-3


def test_without_rewards_the_loss_is_the_plain_clipped_loss():
    logprobs = torch.randn(4, 3, requires_grad=True)
    old = (logprobs + 0.3 * torch.randn(4, 3)).detach()
    adv = torch.tensor([1.0, -1.0, 0.5, 0.0])
    loss, _ = copo_loss(logprobs, old, adv, torch.ones(4, 3))
    ref, _ = clipped_policy_loss(logprobs, old, adv, torch.ones(4, 3), agg="seq_mean_token_mean")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_single_prompt_batch_is_finite():
    adv, _ = copo_advantage(torch.ones(4), group_size=4, answers=torch.zeros(4, dtype=torch.long))
    assert torch.isfinite(adv).all() and torch.all(adv == 0)


def test_all_identical_groups_still_get_a_gradient_unlike_grpo():
    rewards = torch.tensor([1.0] * 4 + [0.0] * 4)  # one solved, one failed prompt
    answers = torch.tensor([1] * 4 + [2] * 4)
    grpo, _ = group_normalize(rewards, group_size=4)
    logprobs = torch.zeros(8, 2, requires_grad=True)
    loss, _ = copo_loss(logprobs, None, grpo, torch.ones(8, 2), rewards=rewards, group_size=4,
                        answers=answers)
    (g,) = torch.autograd.grad(loss, logprobs)
    assert torch.all(grpo == 0)
    assert torch.all(g[:4] < 0) and torch.all(g[4:] > 0)  # solved pushed up, failed pushed down


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="answers"):
        copo_advantage(REWARDS, group_size=4, answers=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="blend"):
        copo_advantage(REWARDS, group_size=4, answers=ANSWERS, blend="hard")
    with pytest.raises(ValueError, match="rewards"):
        copo_advantage(torch.tensor([1.0, float("nan")]), group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        copo_advantage(REWARDS, group_size=5, answers=ANSWERS)


# ---- in the training loop -------------------------------------------------------------------
def test_copo_runs_in_policy_optimization_as_estimator_and_as_loss():
    # a two-arm bandit with one right arm, groups of 4: a quarter to a half of the groups are
    # all-equal, where GRPO's advantage is zero; COPO's forced blend gives them the global signal
    from lab.experiments import run

    task = "token_bandit(probs=(1.0, 0.0))"
    as_loss = run("policy_optimization", task=task, loss="copo", group_size=4, steps=3)
    forced = run("policy_optimization", task=task, advantage="copo(blend='soft_forced')", group_size=4,
                 steps=3)
    grpo = run("policy_optimization", task=task, group_size=4, steps=3)
    assert len(as_loss["loss"]) == 3
    assert np.all(grpo["frac_zero_std_groups"] > 0) and np.all(grpo["adv_zero_frac"] > 0)
    assert np.all(forced["adv_zero_frac"] == 0)


def test_segment_panel_copo_view():
    from lab.viz.lessons import segment_panel

    p = segment_panel("copo", run=False)
    p.controls["steps"].value = 10
    assert p.last_error is None and set(p.result) == {"grpo", "copo"}
