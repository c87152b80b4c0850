"""STEER: entropy-change-aware token reweighting of the clipped surrogate."""
import math

import pytest
import torch

from lab.rl import clipped_policy_loss
from lab.rl.steer import entropy_change_score, steer, steer_weights


# ---------------------------------------------------------------- hand-computed values
def test_spec_example_omega():
    # Prepare: x = x_old = 0.5, H = 1, A = 1
    lp = torch.log(torch.tensor([[0.5]]))
    # Execute
    omega = entropy_change_score(lp, lp, torch.ones(1, 1), torch.ones(1, 1))
    # Assert: Ω = 2·0.25·(ln 0.5 + 1)
    assert omega.item() == pytest.approx(2 * 0.25 * (math.log(0.5) + 1), abs=1e-6)
    assert omega.item() == pytest.approx(0.15343, abs=1e-5)


def test_spec_example_linear_weights():
    w = steer_weights(torch.tensor([[0.0, 0.1, 0.2]]), torch.ones(1, 3))
    assert w.flatten().tolist() == pytest.approx([1.2, 1.0, 0.8])


def test_exponential_weights():
    # k = −ln(0.8)/0.2, w = exp(−kΩ) clamped to [0.8, 1]
    w = steer_weights(torch.tensor([[0.0, 0.1, 0.2]]), torch.ones(1, 3), weight_min=0.8,
                      weight_max=1.0, linear=False)
    assert w.flatten().tolist() == pytest.approx([1.0, math.sqrt(0.8), 0.8])


def test_loss_is_weighted_clipped_surrogate():
    g = torch.Generator().manual_seed(0)
    lp = torch.log(torch.rand(3, 4, generator=g)).requires_grad_()
    old = lp.detach() + 0.1 * torch.randn(3, 4, generator=g)
    adv, mask = torch.tensor([1.0, -0.5, 0.2]), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    entropy = torch.rand(3, 4, generator=g) * 2
    loss, metrics = steer(lp, old, adv, mask, entropy=entropy, return_per_token=True)
    expected, _ = clipped_policy_loss(lp, old, adv, mask, clip_eps_high=0.28, dual_clip=10.0,
                                      token_weights=metrics["weights"])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-7)
    w = metrics["weights"][mask.bool()]
    assert w.min() == pytest.approx(0.8) and w.max() == pytest.approx(1.2)   # extremes reach the bounds


# ---------------------------------------------------------------- invariants and edge cases
def test_weights_decrease_with_omega_and_stay_in_range():
    omega = torch.rand(5, 7, generator=torch.Generator().manual_seed(1))
    w = steer_weights(omega, torch.ones(5, 7))
    order = torch.argsort(omega.flatten())
    assert (w.flatten()[order].diff() <= 1e-7).all()
    assert ((w >= 0.8 - 1e-7) & (w <= 1.2 + 1e-7)).all()


def test_weights_are_detached_and_do_not_change_the_loss_value_on_policy_direction():
    lp = torch.log(torch.tensor([[0.3, 0.6]])).requires_grad_()
    loss, m = steer(lp, None, torch.tensor([1.0]), torch.ones(1, 2), entropy=torch.ones(1, 2),
                    return_per_token=True)
    assert not m["weights"].requires_grad
    loss.backward()
    # on-policy: ∂L/∂ℓ_t = −A·w_t / N_tok
    assert lp.grad.flatten().tolist() == pytest.approx((-m["weights"].flatten() / 2).tolist())


def test_equal_omega_gives_middle_weight_and_empty_mask_is_finite():
    w = steer_weights(torch.full((2, 2), 0.3), torch.ones(2, 2))
    assert w.flatten().tolist() == pytest.approx([1.0] * 4)
    lp = torch.zeros(2, 3, requires_grad=True)
    loss, m = steer(lp, None, torch.ones(2), torch.zeros(2, 3), entropy=torch.ones(2, 3))
    assert loss.item() == 0.0 and m["num_tokens"] == 0.0
    loss.backward()
    assert torch.isfinite(lp.grad).all()


def test_zero_advantage_gets_the_largest_weight():
    lp = torch.log(torch.tensor([[0.5, 0.5]]))
    omega = entropy_change_score(lp, lp, torch.tensor([[0.0, 1.0]]), torch.ones(1, 2))
    w = steer_weights(omega, torch.ones(1, 2))
    assert w.flatten().tolist() == pytest.approx([1.2, 0.8])


@pytest.mark.parametrize("kwargs, match", [
    ({"weight_min": 1.3}, "weight_max"),
    ({"weight_min": -0.1}, "weight_min"),
    ({"entropy": torch.ones(2, 2)}, "entropy"),
])
def test_bad_input_names_the_argument(kwargs, match):
    kwargs.setdefault("entropy", torch.ones(1, 2))
    with pytest.raises(ValueError, match=match):
        steer(torch.zeros(1, 2, requires_grad=True), None, torch.ones(1), torch.ones(1, 2), **kwargs)


# ---------------------------------------------------------------- behaviour: the mechanism
def test_reweighting_moderates_the_predicted_entropy_change_of_a_batch():
    # On GRPO batches of a tabular policy, the weighted mean of Ω (each token's first-order entropy
    # change) is below the unweighted mean: the step's entropy change is damped where it is large.
    from lab.models.policy import TabularPolicy
    from lab.registry import get
    from lab.rl.rollout import rollout
    from toy_envs.token_tasks import make_task

    task = make_task("reverse", difficulty=3)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        policy = TabularPolicy.for_task(task, init_std=1.0, generator=g)
        ro = rollout(policy, task, n_prompts=4, group_size=8, generator=g)
        adv, _ = get("advantage", "grpo")(ro.rewards, group_size=8)
        adv_t = adv[:, None].expand(ro.mask.shape)
        omega = entropy_change_score(ro.logprobs, ro.logprobs, adv_t, ro.entropy)
        w = steer_weights(omega, ro.mask)
        m = ro.mask
        weighted = (w * omega)[m].sum() / w[m].sum()
        assert weighted < omega[m].mean()
        assert torch.corrcoef(torch.stack([w[m], omega[m]]))[0, 1] < -0.9


def test_runs_through_the_training_loop_by_name():
    from lab.experiments import run
    h = run("policy_optimization", advantage="grpo", loss="steer", task="token_bandit", steps=3, epochs=2)
    assert len(h["loss"]) == 3 and (h["grad_norm"] > 0).any()
