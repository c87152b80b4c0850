"""Hand-computed values, invariants, edge cases and errors of the reward-shaping methods."""
import math

import pytest
import torch

from lab.registry import get, make
from lab.rewards.constrained import ConstrainedLagrangian
from lab.rl.core import group_normalize
from lab.rewards.multi_label import multi_label
from lab.rewards.pro import PreferenceOrchestrator, target_weights
from lab.rewards.recap import RECAP, level_scores, recap_scores, recap_weights
from lab.rewards.reward_weighting import GradientWeighting, HypervolumeWeighting, hypervolume_meta, mirror_step
from lab.rewards.structured_output import structured_output


def test_registered_under_catalog_names():
    for name in ("multi_label", "hypervolume_weighting", "gradient_weighting", "constrained_lagrangian",
                 "recap", "pro", "structured_output"):
        assert get("reward", name) is not None
    with pytest.raises(KeyError, match="valid names"):
        get("reward", "no_such_weighting")


# ---- multi_label ----------------------------------------------------------------------------
def test_multi_label_spec_example_gives_zero_grpo_advantages():
    # Prepare: the spec's two responses of one group
    scores = torch.tensor([[0.9, 0.2], [0.5, 0.6]])
    # Execute
    r, _ = multi_label(scores, weights=(0.5, 0.5))
    adv, _ = group_normalize(r, group_size=2)
    # Assert
    assert torch.allclose(r, torch.tensor([0.55, 0.55]))
    assert torch.allclose(adv, torch.zeros(2))


def test_multi_label_normalize_then_sum_is_scale_free():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(8, 2, generator=g)
    scaled = scores * torch.tensor([100.0, 1.0])
    a, _ = multi_label(scores, aggregation="normalize_then_sum", group_size=4)
    b, _ = multi_label(scaled, aggregation="normalize_then_sum", group_size=4)
    assert torch.allclose(a, b, atol=1e-4)
    # with sum_then_normalize the large head dominates the ordering
    c, _ = multi_label(scaled)
    assert torch.equal(torch.argsort(c), torch.argsort(scaled[:, 0]))


def test_multi_label_errors():
    with pytest.raises(ValueError, match="aggregation"):
        multi_label(torch.ones(2, 2), aggregation="mean")
    with pytest.raises(ValueError, match="group_size"):
        multi_label(torch.ones(2, 2), aggregation="normalize_then_sum")


# ---- dynamic reward weighting ---------------------------------------------------------------
def test_hypervolume_meta_spec_values():
    assert hypervolume_meta(0.1) == pytest.approx(0.64950, abs=1e-5)
    assert hypervolume_meta(0.0) == 0.5
    assert hypervolume_meta(-3.0) == 0.5
    assert hypervolume_meta(100.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="delta_hv"):
        hypervolume_meta(float("nan"))


def test_hypervolume_weighting_rewards_front_expansion():
    # Prepare: reference (0, 0), then a first point with HV 1·1 = 1
    hw = HypervolumeWeighting((0.5, 0.5))
    hw.update([0.0, 0.0])
    m1 = hw.update([1.0, 1.0])
    # Execute: a dominated point, then one that adds a 1x1 box
    m2 = hw.update([0.5, 0.5])
    size_after_dominated = len(hw.buffer)
    m3 = hw.update([2.0, 1.0])
    # Assert
    assert m1["hv/meta"] == pytest.approx(0.5 + 1.5 * math.tanh(1.0))
    assert m2["hv/delta"] == 0.0 and m2["hv/meta"] == 0.5 and size_after_dominated == 2
    assert m3["hv/delta"] == pytest.approx(1.0) and m3["hv/volume"] == pytest.approx(2.0)
    r, _ = hw(torch.tensor([[1.0, 0.0]]))
    assert r.item() == pytest.approx(hw.meta * 0.5)
    state = hw.state_dict()
    other = HypervolumeWeighting((0.5, 0.5))
    other.load_state_dict(state)
    assert other.buffer == hw.buffer and other.meta == hw.meta


def test_gradient_weighting_spec_example():
    w = mirror_step(torch.tensor([0.5, 0.5]), torch.tensor([0.2, -0.2]), 1.0, 1.0)
    assert torch.allclose(w, torch.tensor([0.59869, 0.40131], dtype=torch.float64), atol=1e-5)


def test_gradient_weighting_moves_weight_to_the_objective_others_agree_with():
    # Prepare: g_0 agrees with g_1 and g_2; g_1 and g_2 are orthogonal
    grads = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    gw = GradientWeighting(n_objectives=3, lr=0.1, reg=1.0)
    # Execute
    s = gw.influence(grads)
    gw.update(grads)
    # Assert: s = row sums of the Gram matrix [[2,1,1],[1,1,0],[1,0,1]]
    assert s.tolist() == [4.0, 2.0, 2.0]
    assert gw.weights[0] > gw.weights[1] == pytest.approx(float(gw.weights[2]))
    assert float(gw.weights.sum()) == pytest.approx(1.0)


def test_gradient_weighting_accumulates():
    gw = GradientWeighting((0.5, 0.5), lr=1.0, reg=1.0, accumulation=2)
    gw.update(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(gw.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    gw.update(torch.tensor([[3.0, 0.0], [0.0, 0.0]]))                   # mean score (5, 0)
    assert torch.allclose(gw.weights, torch.softmax(torch.tensor([5.0, 0.0], dtype=torch.float64), 0))


def test_dynamic_weighting_errors():
    with pytest.raises(ValueError, match="weights"):
        HypervolumeWeighting((0.5, -0.5))
    with pytest.raises(ValueError, match="evaluation"):
        HypervolumeWeighting((0.5, 0.5)).update([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="reg"):
        GradientWeighting((0.5, 0.5), reg=0.0)
    with pytest.raises(ValueError, match="gradients"):
        GradientWeighting((0.5, 0.5)).update(torch.ones(3, 4))


# ---- constrained RLHF ---------------------------------------------------------------------------
def test_constrained_spec_example():
    # Prepare: λ = (0, 0)
    c = ConstrainedLagrangian((0.5, 0.5), init_std=0.0, lagrange_lr=0.1, momentum=0.0)
    a_rm = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])
    a_kl = torch.tensor([1.0, 0.0, -1.0])
    # Execute
    mixed, m = c(a_rm, kl_advantages=a_kl)
    c.update([0.7, 0.5])                                                # J_1 − θ_1 = 0.2
    # Assert: A_mix = 1.0·Â_KL + 0.5·Â_1 + 0.5·Â_2 (each already has mean 0 and std 1)
    assert m["constrained/kl_weight"] == pytest.approx(1.0)
    assert torch.allclose(mixed, a_kl + 0.5 * a_rm[:, 0] + 0.5 * a_rm[:, 1], atol=1e-6)
    assert c.lambdas.tolist() == pytest.approx([-0.1 * 0.05, 0.0])


def test_multipliers_move_against_the_threshold_gap():
    c = ConstrainedLagrangian((0.3, 0.3), init_std=0.0, lagrange_lr=1.0, momentum=0.0)
    c.update([0.6, 0.1])                  # RM 0 past its proxy point, RM 1 below
    lam, w = c.lambdas, c.weights()
    assert lam[0] < 0 < lam[1]
    assert w[0] < 0.5 < w[1]
    assert c.kl_weight() == pytest.approx(2 - float(w.sum()))
    unsquashed = ConstrainedLagrangian((0.3,), squash=False, init_std=0.0, lagrange_lr=1.0, momentum=0.0)
    unsquashed.update([0.9])
    assert unsquashed.lambdas.tolist() == [0.0]                          # clamped at 0


def test_constrained_edge_cases_and_errors():
    c = ConstrainedLagrangian((0.5,), init_std=0.0)
    out, _ = c(torch.ones(4, 1))                                          # batch std 0 -> eps, finite
    assert torch.isfinite(out).all() and torch.allclose(out, torch.zeros(4))
    with pytest.raises(ValueError, match="columns"):
        c(torch.ones(4, 2))
    with pytest.raises(ValueError, match="returns"):
        c.update([0.1, 0.2])
    with pytest.raises(ValueError, match="thresholds"):
        ConstrainedLagrangian(())
    with pytest.raises(ValueError, match="momentum"):
        ConstrainedLagrangian((0.1,), momentum=1.0)


# ---- RECAP ---------------------------------------------------------------------------------------
def test_recap_spec_example_lab_orientation():
    # Prepare: objective 1 with μ = 0.5, μ̃ = 0.6, σ = 0.05; objective 2 flat (saturated)
    recent = torch.tensor([[0.45, 0.55, 0.45, 0.55], [1.0, 1.0, 1.0, 1.0]])
    previous = torch.tensor([[0.6, 0.6, 0.6, 0.6], [1.0, 1.0, 1.0, 1.0]])
    # Execute
    s = recap_scores(recent, previous)
    lam = recap_weights(s, 5.0)
    # Assert: c = 1.2, i = 0.05/1.1; λ = 2·softmax(s/5)
    assert s.tolist() == pytest.approx([1.2 + 0.05 / 1.1, 1.0])
    assert lam.tolist() == pytest.approx([1.02454, 0.97546], abs=1e-5)
    assert float(lam.sum()) == pytest.approx(2.0)


def test_recap_is_uniform_until_two_windows():
    rc = RECAP(2, window=3)
    for t in range(5):
        m = rc.update([1.0 / (t + 1), 1.0])
        assert m["recap/lambda"] == [1.0, 1.0]
    m = rc.update([1.0 / 6, 1.0])
    assert m["recap/lambda"][0] > 1.0 > m["recap/lambda"][1]


def test_recap_shifts_weight_to_the_objective_still_improving():
    # objective 0's loss keeps falling, objective 1's has plateaued
    rc = RECAP(2, window=4, temperature=1.0)
    for t in range(20):
        rc.update([1.0 / (1 + 0.5 * t), 0.3])
    assert rc.lambdas[0] > rc.lambdas[1]
    r, _ = rc(torch.tensor([[1.0, 1.0]]))
    assert r.item() == pytest.approx(1.0)                                  # (1/K) Σ λ_k with Σ λ = K


def test_recap_level_rule_favours_the_lagging_objective():
    # both flat; objective 0 still at its initial loss, objective 1 solved
    scores = level_scores(torch.tensor([[1.0, 1.0, 1.0], [0.1, 0.1, 0.1]]), torch.tensor([1.0, 1.0]))
    assert scores.tolist() == pytest.approx([1.0, 0.1])
    rc = RECAP(2, window=3, rule="level")
    for _ in range(4):
        rc.update([1.0, 0.1])
    assert rc.lambdas[0] > rc.lambdas[1]


def test_recap_finite_near_zero_and_negative_losses():
    rc = RECAP(2, window=2)
    for v in ([0.0, -1.0], [0.0, -2.0], [0.0, 1.0], [0.0, 3.0]):
        rc.update(v)
    assert torch.isfinite(rc.lambdas).all()


def test_recap_errors():
    with pytest.raises(ValueError, match="window"):
        RECAP(2, window=1)
    with pytest.raises(ValueError, match="rule"):
        RECAP(2, rule="fast")
    with pytest.raises(ValueError, match="objective_losses"):
        RECAP(2).update([1.0])
    with pytest.raises(ValueError, match="objective_losses"):
        RECAP(2).update([1.0, float("nan")])


# ---- PRO -----------------------------------------------------------------------------------------
def test_pro_target_weights_by_hand():
    w = target_weights(torch.tensor([[3.0, 0.0], [1.0, 2.0]]))          # z-scores (1, −1) and (−1, 1)
    assert w[0].tolist() == pytest.approx([0.8808, 0.1192], abs=1e-4)
    same = target_weights(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    assert torch.allclose(same, torch.full((2, 2), 0.5, dtype=torch.float64))


def test_pro_adapter_learns_prompt_specific_weights():
    # Prepare: feature 0 prompts prefer objective 0, feature 1 prompts objective 1
    features = torch.eye(2).repeat(4, 1)
    preferred = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(4, 1)
    pro = make("reward", "pro", n_features=2, n_objectives=2, lr=0.1)
    before = pro.forward(features[:2]).detach()
    # Execute
    pro.fit(features, preferred, steps=100)
    # Assert
    after = pro.forward(features[:2]).detach()
    assert torch.allclose(before, torch.full((2, 2), 0.5))
    assert after[0, 0] > 0.75 and after[1, 1] > 0.75
    r, _ = pro(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), features=features[:2])
    assert r[0] > r[1]


def test_pro_errors():
    pro = PreferenceOrchestrator(2, 2)
    with pytest.raises(ValueError, match="features"):
        pro.forward(torch.ones(3, 5))
    with pytest.raises(ValueError, match="preferred_scores"):
        pro.fit(torch.ones(3, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="n_objectives"):
        PreferenceOrchestrator(2, 0)


# ---- RL-Struct -----------------------------------------------------------------------------------
def test_structured_output_spec_example():
    # valid, one of two keys, F1 = 0.5, format and length ok
    r, _ = structured_output(torch.tensor([[0.5, 1.0, 1.0, 0.5, 1.0]]))
    assert r.item() == pytest.approx(0.75)


def test_structured_output_gating():
    invalid = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]])
    gated, _ = structured_output(invalid)
    ungated, _ = structured_output(invalid, gate=False)
    assert gated.item() == pytest.approx(0.1 + 0.1)
    assert ungated.item() == pytest.approx(0.2 + 0.1 + 0.3 + 0.1)


def test_structured_output_errors():
    with pytest.raises(ValueError, match="columns"):
        structured_output(torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        structured_output(torch.full((1, 5), 2.0))
    with pytest.raises(TypeError, match="rewards"):
        structured_output([[1.0] * 5])


# ---- the choices the docstrings state ----------------------------------------------------------
def test_multi_label_defaults_to_equal_weights_and_unbiased_group_std():
    scores = torch.tensor([[0.9, 0.2], [0.5, 0.6], [0.1, 0.0], [0.3, 0.4]])
    r, _ = multi_label(scores)
    assert torch.allclose(r, scores.mean(1))
    # groups of two: (x − mean)/(unbiased std + eps) = ±1/√2 per head
    n, _ = multi_label(torch.tensor([[0.0, 0.0], [1.0, 2.0]]), aggregation="normalize_then_sum", group_size=2)
    assert n.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], abs=1e-5)


def test_constrained_without_kl_advantages_and_with_a_batch_of_one():
    c = ConstrainedLagrangian((0.5, 0.5), init_std=0.0)
    a_rm = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])
    mixed, _ = c(a_rm)                                                     # Â_KL = 0: no pull to the reference
    assert torch.allclose(mixed, 0.5 * a_rm[:, 0] + 0.5 * a_rm[:, 1], atol=1e-6)
    one, _ = c(torch.tensor([[3.0, -2.0]]), kl_advantages=torch.tensor([5.0]))
    assert one.tolist() == [0.0]                                           # a batch of one is centred to 0


def test_hypervolume_weighting_normalizes_weights_and_starts_at_meta_one():
    hw = HypervolumeWeighting((1.0, 3.0))
    assert hw.weights.tolist() == pytest.approx([0.25, 0.75])
    assert hw.update([0.0, 0.0])["hv/meta"] == 1.0                         # the reference point: no comparison
    r, _ = hw(torch.tensor([[4.0, 0.0]]))
    assert r.item() == pytest.approx(1.0)


def test_pro_weights_enter_the_reward_without_gradient():
    pro = PreferenceOrchestrator(2, 2, generator=torch.Generator().manual_seed(0))
    r, _ = pro(torch.tensor([[1.0, 0.0]]), features=torch.eye(2)[:1])
    assert not r.requires_grad
