"""NGRPO: advantage calibration with a virtual R_max sample and asymmetric clipping."""
import pytest
import torch

from lab.models.policy import TabularPolicy
from lab.registry import get
from lab.rl import call_with, group_normalize, make_fn
from lab.rl.ngrpo import ngrpo, ngrpo_advantages
from lab.rl.rollout import rollout
from toy_envs.token_tasks import make_task


# ---------------------------------------------------------------- hand-computed values
def test_spec_example_mixed_all_wrong_all_correct():
    # Prepare: three groups of 4 (spec example)
    rewards = torch.tensor([1., 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float64)
    # Execute
    adv, metrics = ngrpo_advantages(rewards, group_size=4)
    # Assert: μ' = 0.6, σ' = 0.5477 | μ' = 0.2, σ' = 0.4472 | all R_max -> 0
    expected = [0.7303, -1.0954, -1.0954, 0.7303] + [-0.4472] * 4 + [0.0] * 4
    assert adv.tolist() == pytest.approx(expected, abs=1e-4)
    assert metrics["ngrpo/frac_calibrated_groups"] == pytest.approx(0.5)   # all-wrong yes, all-correct no
    assert metrics["frac_zero_std_groups"] == pytest.approx(2 / 3)


def test_zero_virtual_samples_is_grpo():
    rewards = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.0, 0.2], dtype=torch.float64)
    adv, _ = ngrpo_advantages(rewards, group_size=3, n_virtual=0)
    grpo, _ = group_normalize(rewards, group_size=3)
    assert torch.allclose(adv, grpo)


def test_more_virtual_samples_push_all_wrong_group_further_down_but_bounded():
    zeros = torch.zeros(4)
    a1, _ = ngrpo_advantages(zeros, group_size=4, n_virtual=1)
    a3, _ = ngrpo_advantages(zeros, group_size=4, n_virtual=3)
    # K virtual ones among n zeros: A = −μ'/σ', μ' = K/(n+K)
    assert (a1 < 0).all() and (a3 < 0).all()
    assert a1[0].item() == pytest.approx(-0.4472, abs=1e-4)
    # K = 3: μ' = 3/7, σ'² = (4·(3/7)² + 3·(4/7)²)/6 = 2/7 -> A = −(3/7)/sqrt(2/7) = −0.8018
    assert a3[0].item() == pytest.approx(-0.8018, abs=1e-4)
    assert (a3 < a1).all()


def test_invariant_to_shifting_rewards_and_r_max_together():
    rewards = torch.tensor([0.2, 0.0, 0.7, 0.4])
    a, _ = ngrpo_advantages(rewards, group_size=4, r_max=1.0)
    b, _ = ngrpo_advantages(rewards + 5.0, group_size=4, r_max=6.0)
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- edge cases and bad input
def test_singleton_group_is_finite():
    adv, _ = ngrpo_advantages(torch.tensor([0.0, 1.0]), group_size=1)
    # {0, 1}: mean 0.5, unbiased std 0.7071 -> −0.7071; {1, 1}: 0
    assert adv.tolist() == pytest.approx([-0.7071, 0.0], abs=1e-4)
    adv0, _ = ngrpo_advantages(torch.tensor([0.0, 1.0]), group_size=1, n_virtual=0)
    assert adv0.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("kwargs, match", [
    ({"rewards": torch.tensor([0.0, 1.5])}, "r_max"),
    ({"rewards": torch.tensor([0.0, float("nan")])}, "rewards"),
    ({"rewards": torch.zeros(3)}, "group_size"),
    ({"rewards": torch.zeros(4), "n_virtual": -1}, "n_virtual"),
])
def test_bad_input_names_the_argument(kwargs, match):
    kwargs.setdefault("group_size", 2)
    with pytest.raises(ValueError, match=match):
        ngrpo_advantages(**kwargs)


# ---------------------------------------------------------------- asymmetric clipping
def test_asymmetric_clipping_hand_computed():
    # Prepare: A = +1 at ρ = 1.22 (inside ε_high = 0.24); A = −1 at ρ = 0.8 (below 1 − ε_low = 0.84)
    old = torch.zeros(2, 1)
    logprobs = torch.log(torch.tensor([[1.22], [0.8]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    # Execute
    loss, metrics = ngrpo(logprobs, old, adv, torch.ones(2, 1), return_per_token=True)
    loss.backward()
    # Assert: pg = [−1.22 (unclipped, grad), 0.84 (clipped, no grad)]; token mean
    assert metrics["per_token_loss"].flatten().tolist() == pytest.approx([-1.22, 0.84], abs=1e-5)
    assert loss.item() == pytest.approx((-1.22 + 0.84) / 2, abs=1e-5)
    assert logprobs.grad[0, 0].item() == pytest.approx(-1.22 / 2, abs=1e-5)
    assert logprobs.grad[1, 0].item() == 0.0
    assert metrics["clip_frac_low"] == 0.5 and metrics["clip_frac_high"] == 0.0
    # the symmetric GRPO range (0.2, 0.2) would have clipped the positive token
    grpo_loss = get("policy_loss", "grpo")
    l2, m2 = grpo_loss(logprobs.detach().requires_grad_(), old, adv, torch.ones(2, 1), beta=0.0)
    assert m2["clip_frac_high"] == 0.5


def test_loss_rejects_inverted_asymmetry():
    with pytest.raises(ValueError, match="clip_eps_low"):
        ngrpo(torch.zeros(1, 1, requires_grad=True), None, torch.ones(1), torch.ones(1, 1),
              clip_eps_low=0.3, clip_eps_high=0.2)


# ---------------------------------------------------------------- behaviour
def _all_wrong_batch():
    """A uniform tabular policy on exact-match arithmetic: one group where every answer is wrong."""
    task = make_task("arithmetic", difficulty=1, partial_credit=False)
    policy = TabularPolicy.for_task(task)
    g = torch.Generator().manual_seed(0)
    ro = rollout(policy, task, n_prompts=1, group_size=8, generator=g)
    assert ro.rewards.sum() == 0            # uniform policy over 14 tokens: all wrong
    return task, policy, ro


@pytest.mark.parametrize("estimator, loss_name, zero", [("grpo", "grpo(beta=0.0)", True), ("ngrpo", "ngrpo", False)])
def test_all_wrong_group_gradient_zero_for_grpo_nonzero_for_ngrpo(estimator, loss_name, zero):
    task, policy, ro = _all_wrong_batch()
    batch = ro.batch()
    adv, _ = call_with(make_fn("advantage", estimator), batch)
    scored = policy.score(ro.prompts, ro.tokens)
    batch.update(advantages=adv, logprobs=scored.logprobs)
    loss, _ = call_with(make_fn("policy_loss", loss_name), batch)
    loss.backward()
    grad = policy.logits.grad
    if zero:
        assert torch.count_nonzero(grad) == 0
    else:
        assert grad.abs().sum() > 0
        # NGRPO pushes the sampled wrong tokens down: a small step lowers their log-probs
        with torch.no_grad():
            policy.logits -= 1.0 * grad
        after = policy.score(ro.prompts, ro.tokens).logprobs
        m = ro.mask
        assert (after[m] < scored.logprobs.detach()[m]).all()


def test_through_the_training_loop_grpo_stalls_on_all_wrong_batches_ngrpo_does_not():
    # a hard token bandit (every arm pays 1 with probability 0.02): many batches hold no success
    from lab.experiments import run
    kwargs = dict(task="token_bandit(probs=(0.02, 0.02, 0.02, 0.02))", steps=10, seed=0)
    grpo = run("policy_optimization", advantage="grpo", loss="grpo(beta=0.0)", **kwargs)
    ngrpo = run("policy_optimization", advantage="ngrpo", loss="ngrpo", **kwargs)
    stalled = grpo["frac_zero_std_groups"] == 1.0
    assert stalled.any()
    assert (grpo["grad_norm"][stalled] == 0).all()          # no signal at all on those steps
    assert (ngrpo["grad_norm"] > 0).all()                   # every all-wrong group still teaches
    assert (ngrpo["adv_mean"][stalled] < 0).all()


def test_advantage_calculator_shows_every_estimator_and_the_all_wrong_group():
    from lab.experiments import run
    from lab.registry import available
    h = run("advantage_zoo", rewards="1, 0, 0, 1", lengths="2, 4, 3, 1", metric="0.1, 0.2, 0.9, 0.8")
    table, skipped = h.artifacts["advantages"], h.artifacts["skipped"]
    assert set(table) | set(skipped) == set(available("advantage"))
    assert {"grpo", "ngrpo", "bnpo", "canon", "hapo_token"} <= set(table)
    all_wrong = slice(8, 12)
    assert table["grpo"][all_wrong] == [0.0] * 4
    assert table["ngrpo"][all_wrong] == pytest.approx([-0.4472] * 4, abs=1e-4)
    assert table["ngrpo"][:4] == pytest.approx([0.7303, -1.0954, -1.0954, 0.7303], abs=1e-4)
    with pytest.raises(ValueError, match="rewards"):
        run("advantage_zoo", rewards="1, x")


def test_advantage_calculator_figure_lists_estimators_as_rows():
    from lab.experiments import run
    from lab.viz.zoo import advantage_zoo_figure
    h = run("advantage_zoo", homogeneous=False)
    fig = advantage_zoo_figure(h)
    assert list(fig.data[0].y) == list(h.artifacts["advantages"])
    assert len(fig.data[0].x) == 4
