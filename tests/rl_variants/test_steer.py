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


def _reference_weights(lp, old, adv, entropy, mask, w_min=0.8, w_max=1.2):
    """Ω and the linear weights written out token by token from the paper's formulas (no lab code)."""
    valid = [(i, t) for i in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[i, t]]
    omega = {}
    for i, t in valid:
        x = min(max(math.exp(lp[i, t].item()), 1e-8), 1 - 1e-8)
        x_old = min(max(math.exp(old[i, t].item()), 1e-8), 1.0)
        omega[i, t] = abs(adv[i].item() / x_old * x * (1 - x) * (math.log(x) + entropy[i, t].item()))
    lo, hi = min(omega.values()), max(omega.values())
    w = torch.zeros(mask.shape)
    for (i, t), o in omega.items():
        w[i, t] = w_max - (o - lo) * (w_max - w_min) / (hi - lo)
    return w


def test_loss_is_weighted_clipped_surrogate():
    g = torch.Generator().manual_seed(0)
    lp = torch.log(torch.rand(3, 4, generator=g)).requires_grad_()
    old = lp.detach() + 0.1 * torch.randn(3, 4, generator=g)
    adv, mask = torch.tensor([1.0, -0.5, 0.2]), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    entropy = torch.rand(3, 4, generator=g) * 2
    loss, metrics = steer(lp, old, adv, mask, entropy=entropy, return_per_token=True)
    weights = _reference_weights(lp.detach(), old, adv, entropy, mask)
    assert torch.allclose(metrics["weights"], weights, atol=1e-6)
    expected, _ = clipped_policy_loss(lp, old, adv, mask, clip_eps_high=0.28, dual_clip=10.0,
                                      token_weights=weights)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    w = weights[mask.bool()]
    assert w.min() == pytest.approx(0.8) and w.max() == pytest.approx(1.2)   # extremes reach the bounds


# ---------------------------------------------------------------- invariants and edge cases
def test_weights_decrease_with_omega_and_stay_in_range():
    omega = torch.rand(5, 7, generator=torch.Generator().manual_seed(1))
    w = steer_weights(omega, torch.ones(5, 7))
    order = torch.argsort(omega.flatten())
    assert (w.flatten()[order].diff() <= 1e-7).all()
    assert ((w >= 0.8 - 1e-7) & (w <= 1.2 + 1e-7)).all()


def test_weights_are_detached_and_scale_the_on_policy_gradient():
    # on-policy x_old = x: Ω = |(A/x)·x(1−x)(ln x + H)| = (1−x)|ln x + 1| = 0.1428, 0.1957 for
    # x = 0.3, 0.6 -> w = 1.2 (the smaller Ω), 0.8 (the larger)
    lp = torch.log(torch.tensor([[0.3, 0.6]])).requires_grad_()
    loss, m = steer(lp, None, torch.tensor([1.0]), torch.ones(1, 2), entropy=torch.ones(1, 2),
                    return_per_token=True)
    assert not m["weights"].requires_grad
    assert m["omega"].flatten().tolist() == pytest.approx(
        [0.7 * abs(math.log(0.3) + 1), 0.4 * abs(math.log(0.6) + 1)], abs=1e-6)
    loss.backward()
    # on-policy: ∂L/∂ℓ_t = −A·w_t / N_tok
    assert lp.grad.flatten().tolist() == pytest.approx([-1.2 / 2, -0.8 / 2])


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


def test_through_the_training_loop_the_weights_span_their_range_and_change_the_run():
    # the first batch comes from the uniform initial policy, where log x + H = −log V + log V = 0
    # for every token: Ω ≡ 0, no token changes the entropy to first order, all weights are the
    # middle 1.0. Afterwards Ω varies and the linear map reaches both bounds; with the weights
    # pinned to 1 (w_min = w_max = 1) the same seed trains differently
    import numpy as np
    from lab.experiments import run
    kw = dict(advantage="grpo", task="reverse(difficulty=2)", steps=3)
    h = run("policy_optimization", loss="steer", **kw)
    flat = run("policy_optimization", loss="steer(weight_min=1.0, weight_max=1.0)", **kw)
    assert h["steer/weight_min"][0] == pytest.approx(1.0) and h["steer/omega_mean"][0] == pytest.approx(0.0)
    assert np.allclose(h["steer/weight_min"][1:], 0.8) and np.allclose(h["steer/weight_max"][1:], 1.2)
    assert np.all(flat["steer/weight_mean"] == 1.0)
    assert not np.allclose(h["loss"], flat["loss"])


def test_non_finite_omega_is_set_to_zero():
    lp = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    adv = torch.tensor([[float("inf"), 1.0]], dtype=torch.float64)
    omega = entropy_change_score(lp, lp, adv, torch.ones(1, 2, dtype=torch.float64))
    assert omega[0, 0].item() == 0.0
    assert omega[0, 1].item() == pytest.approx(2 * 0.25 * (math.log(0.5) + 1))
