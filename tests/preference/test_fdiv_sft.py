"""f-divergence SFT: the KL anchor (plain NLL), Fisher consistency for every f, saturation, errors."""
import math

import pytest
import torch

from lab.preference.fdiv_sft import DIVERGENCES, data_term, fdiv_sft
from lab.preference.sft import sft


def test_kl_is_plain_sft_up_to_a_constant():
    # Prepare: demonstrations with unequal lengths and a reference
    g = torch.Generator().manual_seed(0)
    lp = torch.log(torch.rand(4, 3, generator=g)).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    ref = torch.log(torch.rand(4, 3, generator=g))
    # Execute
    loss, m = fdiv_sft(lp, mask, ref_logprobs=ref, divergence="kl", beta=0.1)
    nll, _ = sft(lp, mask, agg="seq_mean_token_sum")
    # Assert: L = −mean(S − S^ref) (the E_ref term is exactly 1 − 1), same gradient as the sequence NLL
    s, s_ref = (lp * mask).sum(-1), (ref * mask).sum(-1)
    assert loss.item() == pytest.approx(-(s - s_ref).mean().item(), abs=1e-6)
    assert m["implicit_reward"] == pytest.approx(0.1 * (s - s_ref).mean().item(), abs=1e-6)
    assert torch.allclose(torch.autograd.grad(loss, lp)[0], torch.autograd.grad(nll, lp)[0], atol=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_every_divergence_recovers_the_data_distribution(divergence):
    # one-token responses over 3 tokens; P_data = (0.5, 0.3, 0.2) as 10 demonstrations, π_ref uniform-ish;
    # the E_ref term is computed exactly by enumerating the 3 responses with weights π_ref
    p_data = torch.tensor([0.5, 0.3, 0.2])
    demos = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    ref_logits = torch.tensor([0.3, -0.2, 0.1])
    ref_logp = torch.log_softmax(ref_logits, -1)
    theta = ref_logits.clone().requires_grad_()
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(400):
        logp = torch.log_softmax(theta, -1)
        loss, _ = fdiv_sft(logp[demos][:, None], torch.ones(10, 1), ref_logprobs=ref_logp[demos][:, None],
                           divergence=divergence, ref_sample_logprobs=logp[:, None],
                           ref_sample_ref_logprobs=ref_logp[:, None], ref_sample_mask=torch.ones(3, 1),
                           ref_sample_weights=ref_logp.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(torch.softmax(theta.detach(), -1), p_data, atol=0.02)


def test_hellinger_and_js_pulls_saturate_while_nll_does_not():
    log_u = torch.tensor([0.0, 3.0], requires_grad=True)
    weights = {}
    for f in ("kl", "hellinger", "js"):
        (grad,) = torch.autograd.grad(data_term(log_u, f).sum(), log_u)
        weights[f] = grad.tolist()
    assert weights["kl"] == [1.0, 1.0]
    assert weights["hellinger"] == pytest.approx([0.5, 0.5 * math.exp(-1.5)], rel=1e-5)
    assert weights["js"] == pytest.approx([0.5, 1 / (1 + math.exp(3.0))], rel=1e-5)


def test_non_kl_divergences_depend_on_the_reference_samples():
    lp = torch.full((2, 2), -1.0)
    ref = torch.full((2, 2), -1.0)
    samples = torch.full((3, 2), -1.0, requires_grad=True)
    loss, m = fdiv_sft(lp, torch.ones(2, 2), ref_logprobs=ref, divergence="pearson",
                       ref_sample_logprobs=samples, ref_sample_ref_logprobs=torch.full((3, 2), -2.0),
                       ref_sample_mask=torch.ones(3, 2))
    # u = 1 on the data (f'(1) = 0), log u = 2 on the samples: E_ref[u² − 1] = e⁴ − 1
    assert m["fdiv/data_term"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(math.exp(4.0) - 1, rel=1e-5)
    loss.backward()
    assert (samples.grad > 0).all()       # lowering π_θ on reference samples lowers the loss


def test_bad_input():
    lp, mask = torch.zeros(2, 2), torch.ones(2, 2)
    with pytest.raises(ValueError, match="ref_sample_logprobs"):
        fdiv_sft(lp, mask, ref_logprobs=lp, divergence="js")
    with pytest.raises(ValueError, match="divergence"):
        fdiv_sft(lp, mask, ref_logprobs=lp, divergence="tv")
    with pytest.raises(ValueError, match="ref_logprobs"):
        fdiv_sft(lp, mask, ref_logprobs=torch.zeros(3))
    with pytest.raises(ValueError, match="ref_logprobs"):
        fdiv_sft(lp, mask, ref_logprobs=torch.zeros(2, requires_grad=True))
    with pytest.raises(ValueError, match="ref_sample_weights"):
        fdiv_sft(lp, mask, ref_logprobs=lp, divergence="pearson", ref_sample_logprobs=lp,
                 ref_sample_ref_logprobs=lp, ref_sample_mask=mask, ref_sample_weights=torch.tensor([-1.0, 1.0]))


def test_beta_only_scales_the_reported_reward_log_ratio_is_clamped_and_weights_are_normalized():
    lp, mask = torch.full((2, 1), -1.0), torch.ones(2, 1)
    ref = torch.tensor([-2.0, -50.0])                     # log u = 1 and 49 (clamped to 20)
    a, ma = fdiv_sft(lp, mask, ref_logprobs=ref, divergence="kl", beta=0.1)
    b, mb = fdiv_sft(lp, mask, ref_logprobs=ref, divergence="kl", beta=1.0)
    assert a.item() == b.item() == pytest.approx(-(1 + 20) / 2)
    assert mb["implicit_reward"] == pytest.approx(10 * ma["implicit_reward"])
    samples = dict(ref_sample_logprobs=torch.tensor([[-1.0], [-2.0]]), ref_sample_ref_logprobs=torch.full((2, 1), -1.5),
                   ref_sample_mask=torch.ones(2, 1))
    ref = torch.full((2,), -1.0)                          # u = 1 on the data: f'(1) = 0
    w1, _ = fdiv_sft(lp, mask, ref_logprobs=ref, divergence="pearson", ref_sample_weights=torch.tensor([1.0, 3.0]),
                     **samples)
    w2, _ = fdiv_sft(lp, mask, ref_logprobs=ref, divergence="pearson", ref_sample_weights=torch.tensor([0.25, 0.75]),
                     **samples)
    # E_ref[u² − 1] with log u = ±0.5 and weights (1/4, 3/4)
    assert w1.item() == pytest.approx(w2.item()) == pytest.approx(0.25 * math.expm1(1.0) + 0.75 * math.expm1(-1.0))
