"""Advantage estimators and policy losses of the baselines: hand-computed examples from the spec,
invariants, edge cases, and bad input."""
import math

import pytest
import torch

from lab.registry import get, info
from lab.rl import core
from lab.rewards.overlong import overlong_penalty
from lab.rl.dapo import dapo
from lab.sampling.dynamic_sampling import dynamic_sampling_filter
from lab.rl.dr_grpo import dr_grpo_advantages, dr_grpo_loss
from lab.rl.grpo import grpo_advantages, grpo_loss
from lab.rl.gspo import gspo
from lab.rl.ppo import gae, ppo
from lab.rl.reinforce import reinforce, reinforce_baseline
from lab.rl.rloo import rloo

R = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)


def _lengths_mask(lengths, T=None):
    lengths = torch.tensor(lengths)
    T = T or int(lengths.max())
    return torch.arange(T)[None, :] < lengths[:, None]


def _logprobs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (-torch.rand(shape, generator=g, dtype=torch.float64) * 2).requires_grad_(True)


# ---------------------------------------------------------------- registry
@pytest.mark.parametrize("kind,name,arxiv", [
    ("advantage", "reinforce_baseline", None), ("advantage", "rloo", "2402.14740"),
    ("advantage", "gae", "1506.02438"), ("advantage", "grpo", "2402.03300"),
    ("advantage", "dr_grpo", "2503.20783"), ("policy_loss", "reinforce", None),
    ("policy_loss", "ppo", "1707.06347"), ("policy_loss", "grpo", "2402.03300"),
    ("policy_loss", "dr_grpo", "2503.20783"), ("policy_loss", "dapo", "2503.14476"),
    ("policy_loss", "gspo", "2507.18071"),
])
def test_registered_with_papers(kind, name, arxiv):
    entry = info(kind, name)
    assert entry.paper and entry.arxiv == arxiv and entry.module.startswith("lab.rl.")


# ---------------------------------------------------------------- advantage estimators
def test_group_baselines_hand_computed():
    assert reinforce_baseline(R, group_size=4)[0].tolist() == [0.5, -0.5, -0.5, 0.5]
    assert rloo(R, group_size=4)[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert grpo_advantages(R, group_size=4)[0].tolist() == pytest.approx([0.866025] * 1 + [-0.866025] * 2
                                                                          + [0.866025], abs=1e-5)
    assert dr_grpo_advantages(R, group_size=4)[0].tolist() == [0.5, -0.5, -0.5, 0.5]
    batch = reinforce_baseline(torch.tensor([1.0, 0.0, 0.0, 0.0]), baseline="batch_mean")[0]
    assert batch.tolist() == [0.75, -0.25, -0.25, -0.25]
    assert reinforce_baseline(R, baseline="none")[0].tolist() == R.tolist()


def test_rloo_is_scaled_group_mean_baseline():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g)
    loo, _ = rloo(rewards, group_size=3)
    mean_baseline, _ = reinforce_baseline(rewards, group_size=3)
    assert torch.allclose(loo, 1.5 * mean_baseline)
    # leave-one-out by definition for the first response
    assert loo[0].item() == pytest.approx((rewards[0] - rewards[1:3].mean()).item())


@pytest.mark.parametrize("estimator", [grpo_advantages, dr_grpo_advantages, rloo, reinforce_baseline])
def test_all_equal_and_singleton_groups_give_zero_advantages(estimator):
    a, m = estimator(torch.tensor([0.7, 0.7, 0.7, 0.3, 0.9]), group_ids=torch.tensor([0, 0, 0, 1, 2]))
    assert a.tolist() == [0.0] * 5 and m["frac_zero_std_groups"] == 1.0


def test_grpo_advantages_invariant_to_shift_and_scale():
    g = torch.Generator().manual_seed(2)
    rewards = torch.rand(16, generator=g, dtype=torch.float64)
    a, _ = grpo_advantages(rewards, group_size=4, eps=0.0)
    assert torch.allclose(a, grpo_advantages(rewards * 3 + 5, group_size=4, eps=0.0)[0])
    d, _ = dr_grpo_advantages(rewards, group_size=4)
    assert torch.allclose(d, dr_grpo_advantages(rewards + 5, group_size=4)[0])  # shift only


def test_reinforce_baseline_whitening():
    mask = _lengths_mask([3, 1, 2, 2])
    a, m = reinforce_baseline(R, group_size=4, mask=mask, whiten=True)
    assert a.shape == (4, 3)
    assert core.masked_mean(a, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert core.masked_var(a, mask).item() == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="mask"):
        reinforce_baseline(R, group_size=4, whiten=True)


def test_gae_hand_computed():
    # Prepare: the spec's example, plus a padded second row
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.6, 0.8], [0.1, 0.3, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    # Execute
    a, m = gae(r, v, mask, gamma=1.0, lam=0.95, whiten=False)
    # Assert: δ = [0.1, 0.2, 0.2] → Â = [0.4705, 0.39, 0.2]; R̂ = Â + V
    assert a[0].tolist() == pytest.approx([0.4705, 0.39, 0.2])
    assert m["returns"][0].tolist() == pytest.approx([0.9705, 0.99, 1.0])
    # row 2: the value at the padded position is ignored (V after the end = 0)
    assert a[1].tolist() == pytest.approx([0.2 + 0.95 * 1.7, 1.7, 0.0])
    w, _ = gae(r, v, mask)
    assert core.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="lam"):
        gae(r, v, mask, lam=1.5)
    with pytest.raises(ValueError, match="values"):
        gae(r, v[:, :2], mask)


def test_gae_lambda_one_gamma_one_is_monte_carlo_minus_value():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.3, 0.2, 0.1]])
    a, m = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0, whiten=False)
    assert a.tolist()[0] == pytest.approx([0.7, 0.8, 0.9])
    assert m["returns"].tolist()[0] == pytest.approx([1.0, 1.0, 1.0])


def test_gae_explained_variance():
    # R̂ = Â + V with λ = γ = 1 is the Monte Carlo return [1, 1, 1 | 0, 0]
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    returns = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    perfect = gae(r, returns, mask, lam=1.0)[1]["explained_variance"]
    mean_only = gae(r, torch.full((2, 3), 0.6, dtype=torch.float64), mask, lam=1.0)[1]["explained_variance"]
    # an anti-correlated critic V = [0, 0, 0 | 1, 1]: R̂ − V = [1, 1, 1, −1, −1], Var = 0.96, while
    # Var(R̂) = 0.24 -> 1 − 0.96/0.24 = −3 (worse than predicting the mean)
    wrong = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    off = gae(r, wrong, mask, lam=1.0)[1]["explained_variance"]
    assert perfect == pytest.approx(1.0) and mean_only == pytest.approx(0.0, abs=1e-12)
    assert off == pytest.approx(-3.0)
    flat = gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3))[1]["explained_variance"]
    assert math.isnan(flat)                                             # returns do not vary


def test_estimators_reject_nan_and_bad_shapes():
    bad = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    for estimator in (grpo_advantages, dr_grpo_advantages, rloo, reinforce_baseline):
        with pytest.raises(ValueError, match="rewards"):
            estimator(bad, group_size=2)
        with pytest.raises(ValueError, match="rewards"):
            estimator(torch.zeros(2, 2, 2), group_size=2)


# ---------------------------------------------------------------- losses
def test_reinforce_hand_computed():
    # B = 2, R = [1, 0], Σ_t ℓ = [−3, −5] → L = −(1·(−3) + 0)/2 = 1.5
    lp = torch.tensor([[-1.0, -2.0], [-2.5, -2.5]], dtype=torch.float64, requires_grad=True)
    loss, m = reinforce(lp, None, torch.tensor([1.0, 0.0], dtype=torch.float64), torch.ones(2, 2))
    loss.backward()
    assert loss.item() == pytest.approx(1.5)
    assert lp.grad.tolist() == [[-0.5, -0.5], [0.0, 0.0]]
    assert m["pg_loss"] == pytest.approx(1.5) and m["num_seqs"] == 2


def test_reinforce_truncated_importance_weight():
    lp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)                 # ρ = [e, 1]
    loss, _ = reinforce(lp, old, torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 2), is_cap=2.0)
    loss.backward()
    assert lp.grad.tolist() == [[-2.0, -1.0]]                              # min(e, 2) = 2


def test_grpo_loss_hand_computed():
    # lengths [2, 4, 3, 1], ρ = 1, β = 0: L = 0; ∂L/∂ℓ_{1,t} = −0.866/(4·2)
    mask = _lengths_mask([2, 4, 3, 1])
    lp = _logprobs((4, 4))
    a, _ = grpo_advantages(R, group_size=4)
    loss, m = grpo_loss(lp, lp.detach(), a, mask, beta=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert lp.grad[0, 0].item() == pytest.approx(-0.866025 / 8, abs=1e-6)
    assert lp.grad[1, 0].item() == pytest.approx(0.866025 / 16, abs=1e-6)
    assert lp.grad[0, 3].item() == 0.0 and m["clip_frac"] == 0.0


def test_grpo_kl_term_uses_k3_with_gradient():
    lp = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5]], dtype=torch.float64)
    loss, m = grpo_loss(lp, lp.detach(), torch.zeros(1, dtype=torch.float64), torch.ones(1, 1), ref_logprobs=ref)
    loss.backward()
    k3 = math.exp(-0.5) - 1 + 0.5
    assert loss.item() == pytest.approx(0.04 * k3) and m["kl"] == pytest.approx(k3)
    assert lp.grad.item() == pytest.approx(0.04 * (1 - math.exp(-0.5)))   # ∂k3/∂ℓ = 1 − e^{−Δ}


def test_all_equal_rewards_give_finite_loss_with_only_kl():
    mask = _lengths_mask([2, 3])
    lp = _logprobs((2, 3))
    a, _ = grpo_advantages(torch.tensor([1.0, 1.0], dtype=torch.float64), group_size=2)
    loss, m = grpo_loss(lp, lp.detach(), a, mask, ref_logprobs=lp.detach() - 0.1)
    assert torch.isfinite(loss) and m["adv_abs_max"] == 0.0
    assert loss.item() == pytest.approx(0.04 * (math.exp(-0.1) - 1 + 0.1), rel=1e-9)


def test_dr_grpo_loss_hand_computed_and_equivalence():
    mask = _lengths_mask([2, 4, 3, 1])
    lp = _logprobs((4, 4))
    a, _ = dr_grpo_advantages(R, group_size=4)
    loss, _ = dr_grpo_loss(lp, lp.detach(), a, mask, norm_const=4)
    assert loss.item() == pytest.approx(0.125)
    # with every response of length C, Dr. GRPO's sum/(B·C) equals GRPO's per-response mean
    full = torch.ones(4, 4, dtype=torch.bool)
    adv = torch.tensor([0.3, -1.0, 0.2, 0.5], dtype=torch.float64)
    old = lp.detach() + 0.1
    l_dr, _ = dr_grpo_loss(lp, old, adv, full)
    l_grpo, _ = grpo_loss(lp, old, adv, full, beta=0.0)
    assert l_dr.item() == pytest.approx(l_grpo.item())
    with pytest.raises(ValueError, match="norm_const"):
        dr_grpo_loss(lp, None, a, mask, norm_const=2)


def test_dapo_clip_higher_lets_gradient_through():
    lp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-math.log(1.25)]], dtype=torch.float64)               # ρ = 1.25
    adv = torch.ones(1, dtype=torch.float64)
    l_grpo, m_grpo = grpo_loss(lp, old, adv, torch.ones(1, 1), beta=0.0)
    (g_grpo,) = torch.autograd.grad(l_grpo, lp)
    l_dapo, m_dapo = dapo(lp, old, adv, torch.ones(1, 1))
    (g_dapo,) = torch.autograd.grad(l_dapo, lp)
    assert l_grpo.item() == pytest.approx(-1.2) and g_grpo.item() == 0.0 and m_grpo["clip_frac"] == 1.0
    assert l_dapo.item() == pytest.approx(-1.25) and g_dapo.item() == pytest.approx(-1.25)
    assert m_dapo["clip_frac"] == 0.0


def test_dapo_token_mean_weights_every_token_equally():
    mask = _lengths_mask([1, 3])
    lp = _logprobs((2, 3))
    loss, _ = dapo(lp, None, torch.tensor([1.0, 1.0], dtype=torch.float64), mask)
    (g,) = torch.autograd.grad(loss, lp)
    assert g[mask].tolist() == pytest.approx([-0.25] * 4)


def test_overlong_penalty_and_dynamic_sampling_filter():
    penalty, m = overlong_penalty(torch.tensor([16000, 18432, 20480, 20481]), max_length=20480, cache_length=4096)
    assert penalty.tolist() == pytest.approx([0.0, -0.5, -1.0, -1.0])
    assert m["overlong/frac"] == 0.75
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(torch.tensor([1]), max_length=4, cache_length=5)
    keep, m = dynamic_sampling_filter(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), group_size=2)
    assert keep.tolist() == [False, False, True, True, False, False] and m["kept_groups"] == 1.0


def test_gspo_sequence_ratio_hand_computed():
    lp = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    old = -torch.tensor([[0.1, -0.1, 0.3]], dtype=torch.float64)              # log-ratios [0.1, −0.1, 0.3]
    mask = torch.ones(1, 3)
    loss, m = gspo(lp, old, torch.ones(1, dtype=torch.float64), mask)
    (g,) = torch.autograd.grad(loss, lp)
    assert m["ratio_mean"] == pytest.approx(math.exp(0.1))
    assert loss.item() == pytest.approx(-1.0004) and g.abs().max().item() == 0.0
    loss, _ = gspo(lp, old, -torch.ones(1, dtype=torch.float64), mask)
    (g,) = torch.autograd.grad(loss, lp)
    assert loss.item() == pytest.approx(math.exp(0.1))
    assert g.tolist()[0] == pytest.approx([math.exp(0.1) / 3] * 3)          # ∂(s)/∂ℓ_t = s/|y|


def test_gspo_matches_sequence_formulation_off_policy():
    mask = _lengths_mask([3, 2, 4])
    lp = _logprobs((3, 4))
    old = (lp.detach() + 0.05 * torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    adv = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    loss, _ = gspo(lp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    s = torch.exp(core.sequence_logprobs(lp - old, mask, normalize=True))
    reference = torch.maximum(-adv * s, -adv * s.clamp(0.8, 1.2)).mean()
    (g,) = torch.autograd.grad(loss, lp)
    (g_ref,) = torch.autograd.grad(reference, lp)
    assert loss.item() == pytest.approx(reference.item()) and torch.allclose(g, g_ref)


@pytest.mark.parametrize("loss_name,agg", [("grpo", "seq_mean_token_mean"), ("ppo", "token_mean"),
                                           ("dapo", "token_mean"), ("dr_grpo", "seq_mean_token_sum_norm"),
                                           ("gspo", "seq_mean_token_mean")])
def test_on_policy_gradient_equals_reinforce(loss_name, agg):
    mask = _lengths_mask([3, 1, 4, 2])
    lp = _logprobs((4, 4))
    adv = torch.tensor([0.8, -1.1, 0.4, -0.2], dtype=torch.float64)
    # the reference equals the policy: the k3 term of GRPO is 0 with zero gradient (1 − e^0 = 0)
    loss, _ = get("policy_loss", loss_name)(lp, lp.detach(), adv, mask, ref_logprobs=lp.detach())
    (g,) = torch.autograd.grad(loss, lp)
    pg, _ = reinforce(lp, None, adv, mask, agg=agg)
    (g_ref,) = torch.autograd.grad(pg, lp)
    assert torch.allclose(g, g_ref)


def test_ppo_value_loss_hand_computed():
    lp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    values = torch.tensor([[0.5, 1.5]], dtype=torch.float64, requires_grad=True)
    old_values = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    returns = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    loss, m = ppo(lp, None, torch.zeros(1, dtype=torch.float64), torch.ones(1, 2), values=values,
                  old_values=old_values, returns=returns, vf_coef=1.0)
    # token 1: V=0.5 → clipped 0.2: max(0.25, 0.64) = 0.64; token 2: V=1.5 → 1.2: max(0.25, 0.04) = 0.25
    assert m["value_loss"] == pytest.approx(0.5 * (0.64 + 0.25) / 2)
    assert loss.item() == pytest.approx(m["value_loss"])
    loss.backward()
    assert values.grad.tolist()[0] == pytest.approx([0.0, 0.25])              # clipped token: no grad
    with pytest.raises(ValueError, match="returns"):
        ppo(lp, None, torch.zeros(1, dtype=torch.float64), torch.ones(1, 2), values=values)


def test_ppo_dual_clip():
    lp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-math.log(5.0)]], dtype=torch.float64)                # ρ = 5
    loss, m = ppo(lp, old, -torch.ones(1, dtype=torch.float64), torch.ones(1, 1), dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0) and m["clip_frac_dual"] == 1.0


@pytest.mark.parametrize("loss_name", ["reinforce", "ppo", "grpo", "dr_grpo", "dapo", "gspo"])
def test_losses_empty_mask_and_bad_inputs(loss_name):
    fn = get("policy_loss", loss_name)
    lp = _logprobs((2, 3))
    adv = torch.ones(2, dtype=torch.float64)
    loss, m = fn(lp, None, adv, torch.zeros(2, 3, dtype=torch.bool), ref_logprobs=lp.detach())
    loss.backward()
    assert loss.item() == 0.0 and m["num_tokens"] == 0 and torch.isfinite(lp.grad).all()
    with pytest.raises(ValueError, match="mask"):
        fn(lp, None, adv, torch.ones(2, 2))
    with pytest.raises(ValueError, match="advantages"):
        fn(lp, None, torch.ones(3, dtype=torch.float64), torch.ones(2, 3))
    with pytest.raises(ValueError, match="old_logprobs"):
        fn(lp, lp, adv, torch.ones(2, 3))


# ---------------------------------------------------------------- documented choices (module docstrings)
@pytest.mark.parametrize("loss_name", ["dapo", "dr_grpo", "gspo", "reinforce", "ppo"])
def test_no_kl_term_by_default_and_k3_when_beta_is_set(loss_name):
    # β = 0 by default: a distant reference changes nothing; with β > 0 the term is β·agg(k3)
    fn = get("policy_loss", loss_name)
    lp = torch.full((1, 2), -1.0, dtype=torch.float64, requires_grad=True)
    ref = torch.full((1, 2), -1.5, dtype=torch.float64)
    adv = torch.ones(1, dtype=torch.float64)
    mask = torch.ones(1, 2)
    plain, _ = fn(lp, lp.detach(), adv, mask)
    far, _ = fn(lp, lp.detach(), adv, mask, ref_logprobs=ref)
    assert far.item() == pytest.approx(plain.item())
    with_kl, m = fn(lp, lp.detach(), adv, mask, ref_logprobs=ref, beta=0.1)
    k3 = math.exp(-0.5) - 1 + 0.5                                           # Δ = ℓ − ℓ^ref = 0.5
    assert m["kl"] == pytest.approx(k3)
    # every default aggregation of these losses reduces a constant per-token k3 to k3 itself,
    # except reinforce's seq_mean_token_sum (sums 2 tokens) and dr_grpo's sum/(B·C) (C = T = 2)
    per_agg = 2 * k3 if loss_name == "reinforce" else k3
    assert with_kl.item() - plain.item() == pytest.approx(0.1 * per_agg)


def test_gspo_log_ratio_clamp_and_default_lower_clip():
    lp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 2)
    # log s = 50 is clamped to 10: a finite ratio e^10 in the metrics and the loss
    _, m = gspo(lp, lp.detach() - 50.0, torch.ones(1, dtype=torch.float64), mask,
                clip_eps_low=0.2, clip_eps_high=1e6)
    assert m["ratio_max"] == pytest.approx(math.exp(10.0))
    loss, _ = gspo(lp, lp.detach() - 50.0, torch.ones(1, dtype=torch.float64), mask,
                   clip_eps_low=0.2, clip_eps_high=1e6)
    assert loss.item() == pytest.approx(-math.exp(10.0))
    # ε_low = 3e-4 by default: s = e^{−0.1} with A = −1 is clipped up to 1 − 3e-4
    loss, _ = gspo(lp, lp.detach() + 0.1, -torch.ones(1, dtype=torch.float64), mask)
    assert loss.item() == pytest.approx(1 - 3e-4)


def test_rloo_whiten_normalizes_over_the_batch_responses():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    plain, _ = rloo(rewards, group_size=3)
    white, _ = rloo(rewards, group_size=3, whiten=True)
    expected = (plain - plain.mean()) / torch.sqrt(plain.var(unbiased=True) + 1e-8)
    assert torch.allclose(white, expected)
    assert white.mean().item() == pytest.approx(0.0, abs=1e-12)


def test_ppo_and_gae_lab_defaults():
    # GAE: γ = 1, λ = 0.95 and whitening by default
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.6, 0.8]], dtype=torch.float64)
    mask = torch.ones(1, 3)
    raw, _ = gae(r, v, mask, whiten=False)
    assert raw[0].tolist() == pytest.approx([0.4705, 0.39, 0.2])
    assert torch.allclose(gae(r, v, mask)[0], core.masked_whiten(raw, mask))
    # PPO: c_v = 0.1 and ε_v = 0.2; old_values=None means V_old = V (no value clipping)
    lp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    values = torch.tensor([[0.5, 1.5]], dtype=torch.float64, requires_grad=True)
    returns = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    loss, m = ppo(lp, None, zero, torch.ones(1, 2), values=values, returns=returns)
    assert m["value_loss"] == pytest.approx(0.5 * 0.25) and m["value_clip_frac"] == 0.0
    assert loss.item() == pytest.approx(0.1 * 0.5 * 0.25)
    _, m = ppo(lp, None, zero, torch.ones(1, 2), values=values, returns=returns,
               old_values=torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    assert m["value_loss"] == pytest.approx(0.5 * (0.64 + 0.25) / 2)        # clipped at ε_v = 0.2


def test_reinforce_importance_log_ratio_is_clamped_at_20():
    lp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    loss, _ = reinforce(lp, lp.detach() - 100.0, torch.ones(1, dtype=torch.float64), torch.ones(1, 1),
                        is_cap=1e12)
    (g,) = torch.autograd.grad(loss, lp)
    assert g.item() == pytest.approx(-math.exp(20.0))
