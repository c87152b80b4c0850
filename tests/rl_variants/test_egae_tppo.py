"""EGAE (truncated-response GAE) and the T-PPO loss."""
import pytest
import torch

from lab.rl.egae import egae, extended_gae, outcome_token_rewards
from lab.rl.ppo import gae, ppo
from lab.rl.tppo import tppo


def test_spec_example_unfinished():
    # Prepare: l = 3, r = 0, V = (0.2, 0.5, 0.6), gamma = lambda = 1, not finished
    values = torch.tensor([[0.2, 0.5, 0.6]])
    # Execute
    adv, m = extended_gae(values, torch.zeros(1, 3), torch.ones(1, 3),
                          is_finished=torch.tensor([False]), gamma=1.0, lam=1.0)
    returns = m["returns"]
    # Assert: delta = (0.3, 0.1, 0) -> A = (0.4, 0.1, 0); returns all V(s_{l-1}) = 0.6
    assert adv[0].tolist() == pytest.approx([0.4, 0.1, 0.0])
    assert returns[0].tolist() == pytest.approx([0.6, 0.6, 0.6])


def test_finished_rows_are_ordinary_gae():
    # the PPO spec example: r = (0, 0, 1), V = (0.5, 0.6, 0.8), gamma 1, lambda 0.95
    adv, m = extended_gae(torch.tensor([[0.5, 0.6, 0.8]]), torch.tensor([[0.0, 0.0, 1.0]]),
                          torch.ones(1, 3), gamma=1.0, lam=0.95)
    returns = m["returns"]
    assert adv[0].tolist() == pytest.approx([0.4705, 0.39, 0.2])
    assert returns[0].tolist() == pytest.approx([0.9705, 0.99, 1.0])


def test_all_finished_equals_the_lab_gae_whitened_or_not():
    gen = torch.Generator().manual_seed(0)
    values, rewards = torch.rand(5, 6, generator=gen), torch.rand(5, generator=gen)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 1, 3, 5])[:, None]
    tok = outcome_token_rewards(rewards, mask)
    for whiten in (False, True):
        ours, _ = egae(rewards, values=values, mask=mask, is_finished=torch.ones(5, dtype=torch.bool),
                       gamma=0.9, lam=0.8, whiten=whiten)
        ref, _ = gae(tok, values, mask, gamma=0.9, lam=0.8, whiten=whiten)
        assert torch.allclose(ours, ref, atol=1e-6)


def test_unfinished_telescopes_with_gamma_lambda_one():
    gen = torch.Generator().manual_seed(1)
    values = torch.rand(4, 6, generator=gen)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5, [1] * 3 + [0] * 3])
    adv, _ = extended_gae(values, torch.zeros(4, 6), mask, is_finished=torch.zeros(4, dtype=torch.bool),
                          gamma=1.0, lam=1.0)
    lengths = mask.sum(-1)
    for i in range(4):
        v_last = values[i, lengths[i] - 1]
        expected = (v_last - values[i, :lengths[i]]).tolist()
        assert adv[i, :lengths[i]].tolist() == pytest.approx(expected, abs=1e-6)
        assert torch.all(adv[i, lengths[i]:] == 0)


def test_single_token_unfinished_response_is_one_residual():
    adv, _ = extended_gae(torch.tensor([[0.7]]), torch.tensor([[0.1]]), torch.ones(1, 1),
                          is_finished=torch.tensor([False]), gamma=0.9, lam=0.95)
    assert adv.item() == pytest.approx(0.1 + (0.9 - 1.0) * 0.7, abs=1e-6)


def test_outcome_reward_only_on_finished_rows_and_whitening():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    tok = outcome_token_rewards(torch.tensor([1.0, 1.0]), mask, torch.tensor([True, False]))
    assert tok.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    adv, metrics = egae(torch.tensor([1.0, 0.5]), values=torch.rand(2, 3), mask=mask,
                        is_finished=torch.tensor([True, False]))
    assert metrics["adv_mean"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["egae/finished_frac"] == 0.5 and torch.all(adv[0, 2] == 0)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="gamma"):
        egae(torch.ones(1), values=torch.zeros(1, 2), mask=torch.ones(1, 2), gamma=1.5)
    with pytest.raises(ValueError, match="is_finished"):
        egae(values=torch.zeros(1, 2), mask=torch.ones(1, 2), token_rewards=torch.zeros(1, 2),
             is_finished=torch.ones(2))
    with pytest.raises(ValueError, match="token_rewards"):
        egae(values=torch.zeros(1, 2), mask=torch.ones(1, 2), token_rewards=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="rewards"):
        egae(values=torch.zeros(1, 2), mask=torch.ones(1, 2))


def _ppo_inputs(gen):
    logprobs = torch.randn(3, 4, generator=gen).requires_grad_()
    old = (logprobs + 0.2 * torch.randn(3, 4, generator=gen)).detach()
    values = torch.rand(3, 4, generator=gen).requires_grad_()
    returns = torch.rand(3, 4, generator=gen)
    adv = torch.randn(3, 4, generator=gen)
    return logprobs, old, values, returns, adv


def test_tppo_without_window_and_all_finished_is_ppo():
    logprobs, old, values, returns, adv = _ppo_inputs(torch.Generator().manual_seed(2))
    mask = torch.ones(3, 4)
    ours, _ = tppo(logprobs, old, adv, mask, values=values, returns=returns)
    ref, _ = ppo(logprobs, old, adv, mask, values=values, returns=returns)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_tppo_trains_policy_in_the_window_and_value_on_finished_rows():
    logprobs, old, values, returns, adv = _ppo_inputs(torch.Generator().manual_seed(3))
    loss, metrics = tppo(logprobs, old, adv, torch.ones(3, 4), values=values, returns=returns,
                         is_finished=torch.tensor([True, False, True]), window=2)
    loss.backward()
    assert torch.all(logprobs.grad[:, 2:] == 0) and torch.any(logprobs.grad[:, :2] != 0)
    assert torch.all(values.grad[1] == 0) and torch.any(values.grad[[0, 2]] != 0)
    assert metrics["tppo/window_frac"] == 0.5 and metrics["tppo/finished_frac"] == pytest.approx(2 / 3)


def test_tppo_with_no_finished_row_has_no_value_gradient():
    logprobs, old, values, returns, adv = _ppo_inputs(torch.Generator().manual_seed(4))
    loss, _ = tppo(logprobs, old, adv, torch.ones(3, 4), values=values, returns=returns,
                   is_finished=torch.zeros(3, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.all(values.grad == 0)
    with pytest.raises(ValueError, match="window"):
        tppo(logprobs, old, adv, torch.ones(3, 4), window=0)


# ---- behaviour on the toy tasks -------------------------------------------------------------
def test_truncated_advantages_approach_full_gae_as_the_window_grows():
    from lab.experiments import run

    h = run("truncation_window", seed=0)
    egae_err, naive_err = h["egae_error"], h["naive_error"]
    assert h["finished_frac"][-1] == 1.0 and egae_err[-1] == 0.0 and naive_err[-1] == 0.0
    assert egae_err[-2] < 0.6 * egae_err[0]           # closer with a longer window
    assert egae_err[:-1].mean() < naive_err[:-1].mean()  # better than treating the cut as terminal


def test_egae_and_tppo_run_in_policy_optimization_by_name():
    from lab.experiments import run

    h = run("policy_optimization", advantage="egae", loss="tppo", steps=3)
    ref = run("policy_optimization", advantage="gae", loss="ppo", steps=3)
    assert "value_loss" in h.keys
    # complete episodes: EGAE is GAE and T-PPO without a window is PPO, step for step
    assert h["reward"].tolist() == ref["reward"].tolist()
    assert h["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_segment_panel_egae_view():
    from lab.viz.lessons import segment_panel

    p = segment_panel("egae")
    assert p.last_error is None and len(p.figures) == 1
    p.controls["lam"].value = 0.8
    assert p.last_error is None and p.config.lam == 0.8
