"""Pair losses: DPO, IPO, SimPO, AlphaPO, Step-DPO and SFT — hand values, limits, invariants, errors."""
import math

import pytest
import torch

from lab.registry import available, get
from lab.preference.alphapo import alphapo
from lab.preference.dpo import dpo
from lab.preference.ipo import ipo
from lab.preference.core import alpha_reward, implicit_reward, pair_loss
from lab.preference.sft import sft
from lab.preference.simpo import simpo
from lab.preference.step_dpo import step_dpo

ONE = torch.ones(1, 1)


def _tok(*values, grad=False):
    """A (1, T) row of token log-probs."""
    return torch.tensor([list(values)], requires_grad=grad)


def _random_pairs(P=5, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lw = torch.log(torch.rand(P, T, generator=g)).requires_grad_()
    ll = torch.log(torch.rand(P, T, generator=g)).requires_grad_()
    mw = torch.rand(P, T, generator=g) < 0.8
    ml = torch.rand(P, T, generator=g) < 0.8
    mw[:, 0] = ml[:, 0] = True
    rw = torch.log(torch.rand(P, T, generator=g))
    rl = torch.log(torch.rand(P, T, generator=g))
    return lw, ll, mw, ml, rw, rl


# ---------------------------------------------------------------- hand-computed values (spec Part C)
def test_dpo_spec_example():
    # Prepare: β = 0.1, S_w = −10, S_l = −12, S^ref = −11 both → z = 2
    lw, ll = _tok(-4.0, -6.0, grad=True), _tok(-12.0, grad=True)
    # Execute
    loss, m = dpo(lw, ll, chosen_mask=torch.ones(1, 2), rejected_mask=ONE,
                  ref_chosen_logprobs=torch.tensor([-11.0]), ref_rejected_logprobs=torch.tensor([-11.0]))
    # Assert: L = log(1 + e^{−0.2}); implicit rewards ±0.1
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-6) == pytest.approx(0.59814, abs=1e-5)
    assert m["chosen_reward"] == pytest.approx(0.1) and m["rejected_reward"] == pytest.approx(-0.1)
    assert m["reward_margin"] == pytest.approx(0.2) and m["reward_acc"] == 1.0
    assert m["chosen_logps"] == pytest.approx(-10.0) and m["rejected_logps"] == pytest.approx(-12.0)


def test_dpo_gradient_is_sigmoid_weighted_difference():
    lw, ll, mw, ml, rw, rl = _random_pairs()
    beta = 0.5
    loss, _ = dpo(lw, ll, chosen_mask=mw, rejected_mask=ml, ref_chosen_logprobs=rw, ref_rejected_logprobs=rl,
                  beta=beta)
    loss.backward()
    z = ((lw * mw).sum(-1) - (rw * mw).sum(-1) - (ll * ml).sum(-1) + (rl * ml).sum(-1)).detach()
    weight = -beta * torch.sigmoid(-beta * z) / len(z)                        # ∂L/∂S_w per pair
    assert torch.allclose(lw.grad, weight[:, None] * mw, atol=1e-6)
    assert torch.allclose(ll.grad, -weight[:, None] * ml, atol=1e-6)


def test_ipo_spec_example_normalized_and_not():
    # log-ratios +2 over 4 chosen tokens, −2 over 2 rejected tokens; τ = 0.1 → target 5
    args = dict(chosen_mask=torch.ones(1, 4), rejected_mask=torch.ones(1, 2),
                ref_chosen_logprobs=torch.full((1, 4), -1.0), ref_rejected_logprobs=torch.full((1, 2), -1.0))
    lw, ll = torch.full((1, 4), -0.5), torch.full((1, 2), -2.0)
    assert ipo(lw, ll, length_normalize=True, **args)[0].item() == pytest.approx(12.25)
    assert ipo(lw, ll, length_normalize=False, **args)[0].item() == pytest.approx(1.0)


def test_simpo_spec_example():
    # β = 2, γ = 1, S̄_w = −0.5 (two tokens), S̄_l = −1 → β·0.5 − 1 = 0 → ln 2
    loss, m = simpo(_tok(-0.25, -0.75), _tok(-1.0), chosen_mask=torch.ones(1, 2), rejected_mask=ONE,
                    beta=2.0, gamma=1.0)
    assert loss.item() == pytest.approx(math.log(2.0))
    assert m["chosen_reward"] == pytest.approx(-1.0) and m["rejected_reward"] == pytest.approx(-2.0)


def test_alphapo_spec_example_and_simpo_comparison():
    args = dict(chosen_mask=ONE, rejected_mask=ONE)
    loss, m = alphapo(_tok(-0.5), _tok(-1.0), alpha=0.25, beta=2.5, gamma=0.1, **args)
    assert m["chosen_reward"] / 2.5 == pytest.approx(-0.53259, abs=1e-5)
    assert m["rejected_reward"] / 2.5 == pytest.approx(-1.13610, abs=1e-5)
    assert loss.item() == pytest.approx(0.21869, abs=1e-5)
    assert simpo(_tok(-0.5), _tok(-1.0), beta=2.5, gamma=0.1, **args)[0].item() == pytest.approx(0.27508, abs=1e-5)


def test_sft_spec_example_two_aggregations():
    lp, mask = torch.tensor([[-1.0, -2.0], [-3.0, 0.0]]), torch.tensor([[1, 1], [1, 0]])
    assert sft(lp, mask)[0].item() == pytest.approx(2.0)
    assert sft(lp, mask, agg="seq_mean_token_mean")[0].item() == pytest.approx(2.25)
    assert sft(lp, mask, agg="seq_mean_token_sum")[0].item() == pytest.approx(3.0)


def test_implicit_reward_spec_example():
    r = implicit_reward(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -2.0]]), torch.ones(1, 2), beta=0.1)
    assert r.item() == pytest.approx(0.1)


# ---------------------------------------------------------------- limits and invariants
@pytest.mark.parametrize("alpha", [1e-3, -1e-3, 1e-6])
def test_alphapo_small_alpha_recovers_simpo(alpha):
    lw, ll, mw, ml, _, _ = _random_pairs()
    a, _ = alphapo(lw, ll, chosen_mask=mw, rejected_mask=ml, alpha=alpha, beta=2.0, gamma=0.5)
    s, _ = simpo(lw, ll, chosen_mask=mw, rejected_mask=ml, beta=2.0, gamma=0.5)
    assert a.item() == pytest.approx(s.item(), abs=5e-3)
    ga, gs = torch.autograd.grad(a, lw)[0], torch.autograd.grad(s, lw)[0]
    assert torch.allclose(ga, gs, atol=5e-3)


def test_alpha_zero_is_exactly_simpo_and_reward_shape_formula():
    lw, ll, mw, ml, _, _ = _random_pairs()
    a, _ = alphapo(lw, ll, chosen_mask=mw, rejected_mask=ml, alpha=0.0, beta=2.0, gamma=0.5)
    s, _ = simpo(lw, ll, chosen_mask=mw, rejected_mask=ml, beta=2.0, gamma=0.5)
    assert a.item() == s.item()
    x = torch.tensor([-3.0, -1.0, -0.1], dtype=torch.float64)
    for alpha in (0.25, -0.5, 2.0):
        # (1 − π̄^{−α})/α with π̄ = e^x
        assert torch.allclose(alpha_reward(x, alpha), (1 - torch.exp(x) ** (-alpha)) / alpha)
    # the shape is increasing in S̄ for every α and bounded above by 1/α for α > 0
    grid = torch.linspace(-10, 0, 50, dtype=torch.float64)
    for alpha in (-1.0, 0.0, 0.25, 1.0):
        assert (alpha_reward(grid, alpha).diff() > 0).all()
    assert (alpha_reward(grid, 1.0) <= 1.0).all()


def test_alphapo_alpha_reweights_unlikely_responses():
    # ∂r/∂S̄ = β π̄^{−α}: with α > 0 the less likely (rejected) side gets the larger push
    lw, ll = _tok(-0.5, grad=True), _tok(-2.0, grad=True)
    for alpha, rejected_heavier in ((1.0, True), (-1.0, False)):
        loss, _ = alphapo(lw, ll, chosen_mask=ONE, rejected_mask=ONE, alpha=alpha)
        g_w, g_l = torch.autograd.grad(loss, (lw, ll))
        assert (g_l.abs() > g_w.abs()).item() is rejected_heavier
        assert g_l.abs().item() / g_w.abs().item() == pytest.approx(math.exp(alpha * 1.5), rel=1e-5)


def test_identical_chosen_and_rejected_give_ln2_and_zero_gradient():
    lp = _tok(-1.0, -2.0, grad=True)
    mask = torch.ones(1, 2)
    loss, _ = dpo(lp, lp, chosen_mask=mask, rejected_mask=mask, ref_chosen_logprobs=torch.tensor([-3.0]),
                  ref_rejected_logprobs=torch.tensor([-3.0]))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2.0)) and (lp.grad == 0).all()


def test_dpo_invariant_to_a_shared_reference_shift_and_sums_match_per_token_refs():
    lw, ll, mw, ml, rw, rl = _random_pairs()
    args = dict(chosen_mask=mw, rejected_mask=ml)
    base, _ = dpo(lw, ll, ref_chosen_logprobs=rw, ref_rejected_logprobs=rl, **args)
    sums, _ = dpo(lw, ll, ref_chosen_logprobs=(rw * mw).sum(-1), ref_rejected_logprobs=(rl * ml).sum(-1), **args)
    shift = torch.randn(5, 1).expand(5, 4).contiguous()
    # the same constant added to both references of a pair cancels (a prompt-only term)
    shifted, _ = dpo(lw, ll, ref_chosen_logprobs=(rw * mw).sum(-1) + shift[:, 0],
                     ref_rejected_logprobs=(rl * ml).sum(-1) + shift[:, 0], **args)
    assert base.item() == pytest.approx(sums.item(), abs=1e-6) == pytest.approx(shifted.item(), abs=1e-6)


def test_label_smoothing_and_hinge_forms():
    z = torch.tensor([-1.0, 0.5, 3.0])
    eps = 0.2
    expected = -(1 - eps) * torch.log(torch.sigmoid(z)) - eps * torch.log(torch.sigmoid(-z))
    assert torch.allclose(pair_loss(z, label_smoothing=eps), expected, atol=1e-6)
    assert pair_loss(z, loss_type="hinge").tolist() == pytest.approx([2.0, 0.5, 0.0])
    # smoothing makes the loss minimal at a finite margin: its derivative vanishes at z = logit(1 − ε)
    zs = torch.tensor([math.log((1 - eps) / eps)], requires_grad=True)
    pair_loss(zs, label_smoothing=eps).sum().backward()
    assert abs(zs.grad.item()) < 1e-6


def test_length_normalization_changes_which_response_wins():
    # a long chosen response with better tokens, a short rejected one with worse tokens
    lw, ll = _tok(-0.5, -0.5, -0.5, -0.5), _tok(-1.0)
    args = dict(chosen_mask=torch.ones(1, 4), rejected_mask=ONE, beta=1.0, gamma=0.0)
    _, m_norm = simpo(lw, ll, length_normalize=True, **args)
    _, m_sum = simpo(lw, ll, length_normalize=False, **args)
    assert m_norm["reward_acc"] == 1.0 and m_sum["reward_acc"] == 0.0


def test_step_dpo_is_dpo_on_step_pairs_with_its_beta():
    lw, ll, mw, ml, rw, rl = _random_pairs()
    args = dict(chosen_mask=mw, rejected_mask=ml, ref_chosen_logprobs=rw, ref_rejected_logprobs=rl)
    assert step_dpo(lw, ll, **args)[0].item() == pytest.approx(dpo(lw, ll, beta=0.5, **args)[0].item())


# ---------------------------------------------------------------- edge cases
def test_empty_responses_and_batches_are_finite():
    lp = torch.zeros(2, 3, requires_grad=True)
    empty = torch.zeros(2, 3, dtype=torch.bool)
    for fn in (simpo, alphapo):
        loss, _ = fn(lp, lp, chosen_mask=empty, rejected_mask=empty)
        assert torch.isfinite(loss)
    loss, m = dpo(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 3), chosen_mask=torch.zeros(0, 3),
                  rejected_mask=torch.zeros(0, 3), ref_chosen_logprobs=torch.zeros(0),
                  ref_rejected_logprobs=torch.zeros(0))
    assert loss.item() == 0.0 and m["num_pairs"] == 0.0
    loss, m = sft(lp, empty)
    loss.backward()
    assert loss.item() == 0.0 and m["num_tokens"] == 0.0


def test_alphapo_very_unlikely_responses_stay_finite():
    loss, _ = alphapo(_tok(-50.0, grad=True), _tok(-60.0), chosen_mask=ONE, rejected_mask=ONE, alpha=1.0)
    assert torch.isfinite(loss)


def test_half_precision_inputs_give_float32_losses():
    lw, ll, mw, ml, rw, rl = _random_pairs()
    loss, _ = dpo(lw.detach().bfloat16(), ll.detach().bfloat16(), chosen_mask=mw, rejected_mask=ml,
                  ref_chosen_logprobs=rw.bfloat16(), ref_rejected_logprobs=rl.bfloat16())
    assert loss.dtype == torch.float32


# ---------------------------------------------------------------- bad input and the registry
def test_bad_inputs_raise_naming_the_argument():
    lw, ll, mw, ml, rw, rl = _random_pairs()
    args = dict(chosen_mask=mw, rejected_mask=ml)
    with pytest.raises(ValueError, match="ref_chosen_logprobs"):
        dpo(lw, ll, **args)
    with pytest.raises(ValueError, match="beta"):
        dpo(lw, ll, ref_chosen_logprobs=rw, ref_rejected_logprobs=rl, beta=-1.0, **args)
    with pytest.raises(ValueError, match="ref_chosen_logprobs"):
        dpo(lw, ll, ref_chosen_logprobs=rw.requires_grad_(), ref_rejected_logprobs=rl, **args)
    with pytest.raises(ValueError, match="chosen_mask"):
        simpo(lw, ll, chosen_mask=mw[:, :2], rejected_mask=ml)
    with pytest.raises(ValueError, match="same number of pairs"):
        simpo(lw, ll[:3], chosen_mask=mw, rejected_mask=ml[:3])
    with pytest.raises(ValueError, match="label_smoothing"):
        simpo(lw, ll, label_smoothing=0.7, **args)
    with pytest.raises(ValueError, match="loss_type"):
        simpo(lw, ll, loss_type="square", **args)
    with pytest.raises(TypeError, match="length_normalize"):
        simpo(lw, ll, length_normalize=1, **args)
    with pytest.raises(TypeError, match="alpha"):
        alphapo(lw, ll, alpha="big", **args)
    with pytest.raises(TypeError, match="chosen_logprobs"):
        simpo([[0.0]], ll, **args)
    with pytest.raises(ValueError, match="agg"):
        sft(lw, mw, agg="mean")


def test_registered_under_catalog_names():
    names = set(available("preference_loss"))
    assert {"sft", "dpo", "ipo", "simpo", "alphapo", "step_dpo", "fdiv_sft", "inverted_hinge",
            "ranking_accuracy"} <= names
    assert get("preference_loss", "dpo") is dpo


# ---------------------------------------------------------------- the choices the docstrings state
def test_dpo_length_normalize_uses_per_token_means():
    # chosen: 2 tokens, S = −4, S^ref = −6 → S̄ − S̄^ref = 1; rejected: 1 token, log-ratio −1 → z = 2
    lw, ll = _tok(-2.0, -2.0), _tok(-2.0)
    args = dict(chosen_mask=torch.ones(1, 2), rejected_mask=ONE, ref_chosen_logprobs=torch.tensor([-6.0]),
                ref_rejected_logprobs=torch.tensor([-1.0]), beta=1.0)
    assert dpo(lw, ll, length_normalize=True, **args)[0].item() == pytest.approx(math.log1p(math.exp(-2.0)))
    # the sums give z = 2 − (−1) = 3
    assert dpo(lw, ll, **args)[0].item() == pytest.approx(math.log1p(math.exp(-3.0)))


def test_padding_may_hold_minus_inf_and_is_ignored():
    lw, ll = _tok(-1.0, float("-inf"), grad=True), _tok(-3.0, float("nan"), grad=True)
    mask = torch.tensor([[1, 0]])
    loss, _ = dpo(lw, ll, chosen_mask=mask, rejected_mask=mask, ref_chosen_logprobs=torch.tensor([-2.0]),
                  ref_rejected_logprobs=torch.tensor([-2.0]), beta=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2.0)))
    assert torch.isfinite(lw.grad).all() and lw.grad[0, 1] == 0.0
    nll, _ = sft(lw.detach(), mask)
    assert nll.item() == pytest.approx(1.0)


def test_ipo_reports_tau_scaled_implicit_rewards_and_the_margin():
    lw, ll = torch.full((1, 4), -0.5), torch.full((1, 2), -2.0)
    _, m = ipo(lw, ll, chosen_mask=torch.ones(1, 4), rejected_mask=torch.ones(1, 2), beta=0.1,
               ref_chosen_logprobs=torch.full((1, 4), -1.0), ref_rejected_logprobs=torch.full((1, 2), -1.0))
    assert m["chosen_reward"] == pytest.approx(0.2) and m["rejected_reward"] == pytest.approx(-0.2)
    assert m["ipo/margin_h"] == pytest.approx(4.0)


def test_simpo_empty_response_scores_zero():
    # an empty chosen response has S̄ = 0 (length clamped to 1), not NaN
    _, m = simpo(_tok(-5.0), _tok(-1.0), chosen_mask=torch.zeros(1, 1), rejected_mask=ONE, beta=2.0, gamma=0.0)
    assert m["chosen_reward"] == 0.0 and m["rejected_reward"] == pytest.approx(-2.0)


@pytest.mark.parametrize("missing", ["ref_chosen_logprobs", "ref_rejected_logprobs"])
def test_dpo_needs_both_reference_log_probs(missing):
    # DPO compares the policy with a reference: leaving one out must not silently drop its term
    lp = torch.tensor([[-1.0, -2.0]])
    mask = torch.ones(1, 2)
    refs = {"ref_chosen_logprobs": torch.tensor([-3.0]), "ref_rejected_logprobs": torch.tensor([-3.0])}
    refs.pop(missing)
    with pytest.raises(ValueError, match=missing):
        dpo(lp, lp - 1.0, chosen_mask=mask, rejected_mask=mask, **refs)
