"""PSR / NSR / W-REINFORCE / GRPO-N: advantages, kept tokens, gradients."""
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
