"""Ranking accuracy, the idealized ranking accuracy, the DPO loss threshold, displacement and CHES."""
import math

import pytest
import torch

from lab.preference.dpo import dpo
from lab.preference.ranking import (
    ches_score, idealized_margin, likelihood_displacement, ranking_accuracy, ranking_loss_threshold,
)


def test_ranking_accuracy_hand_example_summed_and_normalized():
    # pair 1: S_w = −2 > S_l = −3 (right); pair 2: S_w = −4 (two tokens, S̄ = −2) < S_l = −3 (one token)
    lw = torch.tensor([[-2.0, 0.0], [-2.0, -2.0]])
    ll = torch.tensor([[-3.0, 0.0], [-3.0, 0.0]])
    mw, ml = torch.tensor([[1, 0], [1, 1]]), torch.tensor([[1, 0], [1, 0]])
    acc, m = ranking_accuracy(lw, ll, chosen_mask=mw, rejected_mask=ml)
    assert acc.item() == 0.5 and m["ranking_correct"].tolist() == [True, False]
    acc_norm, _ = ranking_accuracy(lw, ll, chosen_mask=mw, rejected_mask=ml, length_normalize=True)
    assert acc_norm.item() == 1.0


def test_ties_count_as_wrong_and_tolerance_widens_them():
    lw, ll = torch.tensor([[-1.0], [-1.0]]), torch.tensor([[-1.0], [-1.02]])
    ones = torch.ones(2, 1)
    acc, m = ranking_accuracy(lw, ll, chosen_mask=ones, rejected_mask=ones)
    assert acc.item() == 0.5 and m["tie_frac"] == 0.5
    acc, _ = ranking_accuracy(lw, ll, chosen_mask=ones, rejected_mask=ones, tie_tol=0.05)
    assert acc.item() == 0.0


def test_idealized_margin_spec_example():
    # β = 0.1, α = 0.8, S^ref_w − S^ref_l = −15 → −15 + 10 ln 4 = −1.137: even the optimum misranks
    m = idealized_margin(torch.tensor([-15.0]), torch.tensor([0.0]), torch.tensor([0.8]), beta=0.1)
    assert m.item() == pytest.approx(-15 + 10 * math.log(4.0), abs=1e-4) == pytest.approx(-1.137, abs=1e-3)
    # a larger annotator agreement (or a smaller β) flips it
    assert idealized_margin(torch.tensor([-15.0]), torch.tensor([0.0]), torch.tensor([0.9]), beta=0.1).item() > 0
    assert ranking_loss_threshold(torch.tensor([-15.0]), torch.tensor([0.0]), beta=0.1).item() == pytest.approx(
        0.20141, abs=1e-5)


def test_idealized_accuracy_through_the_metric_and_clipping_of_alpha():
    ones = torch.ones(3, 1)
    ref_w, ref_l = torch.tensor([[-15.0], [-1.0], [-2.0]]), torch.tensor([[0.0], [-2.0], [-1.0]])
    _, m = ranking_accuracy(ref_w, ref_l, chosen_mask=ones, rejected_mask=ones, ref_chosen_logprobs=ref_w,
                            ref_rejected_logprobs=ref_l, pref_prob=torch.tensor([0.8, 0.5, 1.0]), beta=0.1)
    # pair 1 as the spec example (wrong); pair 2: α = 0.5 adds nothing (reference right); pair 3: α = 1
    # is clipped to 1 − 1e-3 → +10·logit(0.999) ≈ 69 flips the reference's −1
    assert m["idealized_correct"].tolist() == [False, True, True]
    assert m["idealized_ranking_accuracy"] == pytest.approx(2 / 3)
    assert m["ref_ranking_accuracy"] == pytest.approx(1 / 3)


def test_dpo_ranks_a_pair_correctly_exactly_when_its_loss_is_below_the_threshold():
    g = torch.Generator().manual_seed(0)
    P, beta = 200, 0.1
    s_w, s_l, r_w, r_l = (torch.randn(P, 1, generator=g) * 5 for _ in range(4))
    ones = torch.ones(P, 1)
    threshold = ranking_loss_threshold(r_w[:, 0], r_l[:, 0], beta=beta)
    correct = ranking_accuracy(s_w, s_l, chosen_mask=ones, rejected_mask=ones)[1]["ranking_correct"]
    per_pair = torch.stack([dpo(s_w[i:i + 1], s_l[i:i + 1], chosen_mask=ones[:1], rejected_mask=ones[:1],
                                ref_chosen_logprobs=r_w[i], ref_rejected_logprobs=r_l[i], beta=beta)[0]
                            for i in range(P)])
    assert torch.equal(correct, per_pair < threshold)
    assert 0 < int(correct.sum()) < P


def test_likelihood_displacement_and_bad_input():
    d = likelihood_displacement([[-5.0, -3.0], [-6.0, -3.0], [-4.0, -1.0]])
    assert d.tolist() == pytest.approx([0.0, -0.5, 1.5])
    assert likelihood_displacement([-2.0, -3.0]).tolist() == [0.0, -1.0]
    with pytest.raises(ValueError, match="chosen_logps"):
        likelihood_displacement([])
    with pytest.raises(ValueError, match="NaN"):
        likelihood_displacement([0.0, float("nan")])


def test_ches_spec_example_and_length_normalization():
    one = torch.ones(1, 1)
    h_w = torch.tensor([[[1.0, 0.0]]])
    assert ches_score(h_w, torch.tensor([[[2.0, 0.0]]]), chosen_mask=one, rejected_mask=one).item() == 1.0
    assert ches_score(h_w, torch.tensor([[[0.0, 1.0]]]), chosen_mask=one, rejected_mask=one).item() == -1.0
    # two rejected tokens (2, 0) + (2, 0): ⟨(1,0),(4,0)⟩/(1·2) − 1/1 = 1
    h_l = torch.tensor([[[2.0, 0.0], [2.0, 0.0]]])
    h_w2 = torch.tensor([[[1.0, 0.0], [9.0, 9.0]]])
    score = ches_score(h_w2, h_l, chosen_mask=torch.tensor([[1, 0]]), rejected_mask=torch.ones(1, 2),
                       length_normalize=True)
    assert score.item() == pytest.approx(1.0)


def test_bad_input_names_the_argument():
    ones = torch.ones(1, 1)
    with pytest.raises(ValueError, match="pref_prob"):
        idealized_margin(torch.zeros(1), torch.zeros(1), torch.tensor([1.5]))
    with pytest.raises(ValueError, match="beta"):
        ranking_loss_threshold(torch.zeros(1), torch.zeros(1), beta=0.0)
    with pytest.raises(ValueError, match="ref_chosen_logprobs"):
        ranking_accuracy(ones, ones, chosen_mask=ones, rejected_mask=ones, pref_prob=torch.ones(1))
    with pytest.raises(ValueError, match="tie_tol"):
        ranking_accuracy(ones, ones, chosen_mask=ones, rejected_mask=ones, tie_tol=-1.0)


def test_idealized_margin_uses_sums_whatever_length_normalize_says():
    # reference: chosen two tokens of −1 (S = −2, S̄ = −1), rejected one token −1.5: the sums misrank,
    # the means rank right; α = 0.5 adds nothing, so only the sums decide R*
    ref_w, ref_l = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-1.5, 0.0]])
    mw, ml = torch.ones(1, 2), torch.tensor([[1, 0]])
    for flag in (False, True):
        _, m = ranking_accuracy(ref_w, ref_l, chosen_mask=mw, rejected_mask=ml, ref_chosen_logprobs=ref_w,
                                ref_rejected_logprobs=ref_l, pref_prob=torch.tensor([0.5]), length_normalize=flag)
        assert m["idealized_correct"].tolist() == [False]
        assert m["ref_ranking_accuracy"] == (1.0 if flag else 0.0)
