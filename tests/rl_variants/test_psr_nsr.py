"""PSR / NSR / W-REINFORCE / GRPO-N: advantages, kept tokens, gradients."""
import numpy as np
import pytest
import torch

from lab.rl.core import clipped_policy_loss, group_normalize
from lab.rl.psr_nsr import psr_nsr, psr_nsr_advantages

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0])
MASK = torch.ones(4, 3)


def test_spec_example_advantages():
    # Prepare: one group [1, 0, 0, 1]; GRPO A = ±0.866
    grpo, _ = group_normalize(REWARDS, group_size=4)
    # Execute
    table = {mode: psr_nsr_advantages(MASK, mode=mode, rewards=REWARDS, advantages=grpo)
             for mode in ("psr", "nsr", "w_reinforce", "grpo_n")}
    # Assert (first token of each row; rows outside `keep` leave the loss)
    adv = {m: a[:, 0].tolist() for m, (a, _) in table.items()}
    keep = {m: k[:, 0].tolist() for m, (_, k) in table.items()}
    assert adv["grpo_n"] == pytest.approx([0.0, -0.866025, -0.866025, 0.0], abs=1e-5)
    assert keep["grpo_n"] == [False, True, True, False]
    assert adv["nsr"][1:3] == [-1.0, -1.0] and keep["nsr"] == [False, True, True, False]
    assert adv["psr"][0] == adv["psr"][3] == 1.0 and keep["psr"] == [True, False, False, True]
    assert adv["w_reinforce"] == pytest.approx([0.1, -1.0, -1.0, 0.1])
    assert all(keep["w_reinforce"])


def _grad(mode, **kw):
    logprobs = torch.zeros(4, 3, requires_grad=True)
    grpo, _ = group_normalize(REWARDS, group_size=4)
    loss, metrics = psr_nsr(logprobs, None, grpo, MASK, rewards=REWARDS, mode=mode, **kw)
    loss.backward()
    return logprobs.grad, metrics


def test_nsr_only_pushes_down_incorrect_and_psr_only_pushes_up_correct():
    g_nsr, m_nsr = _grad("nsr")
    g_psr, _ = _grad("psr")
    # token_mean over the 6 kept tokens: d loss / d l = -A / 6
    assert torch.allclose(g_nsr[[0, 3]], torch.zeros(2, 3))
    assert torch.allclose(g_nsr[[1, 2]], torch.full((2, 3), 1 / 6))
    assert torch.allclose(g_psr[[1, 2]], torch.zeros(2, 3))
    assert torch.allclose(g_psr[[0, 3]], torch.full((2, 3), -1 / 6))
    assert m_nsr["psr_nsr/kept_frac"] == pytest.approx(0.5)


def test_w_reinforce_weights_correct_samples_by_lambda():
    g, _ = _grad("w_reinforce", lam=0.25)
    assert torch.allclose(g[0], torch.full((3,), -0.25 / 12))
    assert torch.allclose(g[1], torch.full((3,), 1 / 12))


def test_grpo_n_equals_the_clipped_loss_on_negative_tokens_only():
    logprobs = torch.randn(4, 3).requires_grad_()
    old = (logprobs + 0.1 * torch.randn(4, 3)).detach()
    grpo, _ = group_normalize(REWARDS, group_size=4)
    loss, _ = psr_nsr(logprobs, old, grpo, MASK, mode="grpo_n")
    neg_mask = MASK * (grpo < 0)[:, None]
    ref, _ = clipped_policy_loss(logprobs, old, grpo, neg_mask)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_all_correct_batch_under_nsr_gives_zero_loss_with_graph():
    logprobs = torch.randn(4, 3, requires_grad=True)
    loss, metrics = psr_nsr(logprobs, None, torch.zeros(4), MASK, rewards=torch.ones(4), mode="nsr")
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logprobs.grad == 0)
    assert metrics["num_tokens"] == 0.0


def test_grpo_n_all_correct_group_has_no_gradient():
    logprobs = torch.randn(4, 3, requires_grad=True)
    adv, _ = group_normalize(torch.ones(4), group_size=4)
    loss, _ = psr_nsr(logprobs, None, adv, MASK, mode="grpo_n")
    loss.backward()
    assert torch.isfinite(loss) and torch.all(logprobs.grad == 0)


def test_bad_inputs_name_the_argument():
    lp = torch.zeros(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="mode"):
        psr_nsr(lp, None, torch.zeros(4), MASK, rewards=REWARDS, mode="positive")
    with pytest.raises(ValueError, match="rewards"):
        psr_nsr(lp, None, torch.zeros(4), MASK, mode="nsr")
    with pytest.raises(ValueError, match="rewards"):
        psr_nsr(lp, None, torch.zeros(4), MASK, rewards=torch.tensor([1.0, float("nan"), 0, 0]), mode="psr")
    with pytest.raises(ValueError, match="lam"):
        psr_nsr(lp, None, torch.zeros(4), MASK, rewards=REWARDS, mode="w_reinforce", lam=-1.0)


# ---- behaviour on the toy tasks -------------------------------------------------------------
THREE_CORRECT = "token_bandit(probs=(1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0))"


def test_pass_at_k_by_hand():
    from lab.experiments.segments import pass_at_k

    # groups of 4 with 0, 1 and 4 correct: pass@2 = 0, 1 - C(3,2)/C(4,2) = 1/2, 1
    rewards = [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1]
    assert pass_at_k(rewards, 4, 2) == pytest.approx((0 + 0.5 + 1) / 3)
    assert pass_at_k(rewards, 4, 1) == pytest.approx((0 + 0.25 + 1) / 3)
    with pytest.raises(ValueError, match="k"):
        pass_at_k(rewards, 4, 5)


@pytest.mark.slow
def test_nsr_keeps_the_diversity_of_correct_answers_that_psr_collapses():
    # three equally correct arms: PSR's rich-get-richer updates sharpen onto one of them, NSR only
    # pushes wrong arms down, so the mass stays spread over all correct answers
    from lab.experiments import run
    from lab.experiments.segments import distinct_correct

    runs = {mode: run("policy_optimization", task=THREE_CORRECT, lr=0.5, steps=40,
                      loss=f"psr_nsr(mode='{mode}')") for mode in ("psr", "nsr")}
    assert runs["nsr"]["reward"][-5:].mean() > 0.95 and runs["psr"]["reward"][-5:].mean() > 0.95
    assert runs["nsr"]["entropy"][-1] > runs["psr"]["entropy"][-1] + 0.3
    assert runs["nsr"]["entropy"][-1] == pytest.approx(np.log(3), abs=0.05)
    assert distinct_correct(runs["nsr"]) == 3


def test_every_mode_trains_on_its_samples_in_policy_optimization():
    # a deterministic one-token bandit (two arms pay 1, three pay 0): the share of the batch each
    # mode trains on is known from the logged reward: PSR the correct answers, NSR the wrong ones,
    # W-REINFORCE all of them, GRPO-N the non-positive advantages (= the wrong ones here, as a
    # group with a correct answer gives its wrong answers A < 0 and an all-wrong group A = 0)
    from lab.experiments import run

    task = "token_bandit(probs=(1.0, 1.0, 0.0, 0.0, 0.0))"
    kept = {}
    for mode in ("psr", "nsr", "w_reinforce", "grpo_n"):
        h = run("policy_optimization", loss=f"psr_nsr(mode='{mode}')", task=task, steps=4)
        kept[mode], reward = h["psr_nsr/kept_frac"], h["reward"]
        assert np.isfinite(h["loss"]).all()
        expected = {"psr": reward, "nsr": 1 - reward, "w_reinforce": np.ones(4), "grpo_n": 1 - reward}[mode]
        assert kept[mode] == pytest.approx(expected), mode


def test_segment_panel_sign_view():
    from lab.viz.lessons import segment_panel

    p = segment_panel("sign", run=False)
    p.controls["steps"].value = 10
    assert p.last_error is None and set(p.result) == {"psr", "nsr"} and len(p.figures) == 2


def test_default_mode_is_grpo_n_with_the_ppo_clip_range():
    lp = torch.zeros(2, 1, dtype=torch.float64, requires_grad=True)
    old = lp.detach() - torch.tensor([[0.4], [0.4]], dtype=torch.float64)     # ρ = e^0.4 ≈ 1.49
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    default, _ = psr_nsr(lp, old, adv, torch.ones(2, 1))
    grpo_n, _ = psr_nsr(lp, old, adv, torch.ones(2, 1), mode="grpo_n")
    assert default.item() == pytest.approx(grpo_n.item())
    # grpo_n keeps the negative row only: max(−ρ·(−1), −clip(ρ, 0.8, 1.2)·(−1)) = ρ (unclipped side)
    assert default.item() == pytest.approx(np.exp(0.4))
    # psr on the correct row: max(−ρ, −1.2) = −1.2, the upper clip at 1 + 0.2
    psr, _ = psr_nsr(lp, old, adv, torch.ones(2, 1), mode="psr", rewards=torch.tensor([1.0, 0.0]))
    assert psr.item() == pytest.approx(-1.2)
