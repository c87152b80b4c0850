"""reward/kl_penalty: the KL penalty in the reward (RLHF-PPO), and why PPO's KL *loss* term uses k3."""
import math

import pytest
import torch

import lab.experiments as E
from lab.registry import info
from lab.rl.core import aggregate, kl
from lab.rewards.kl_penalty import kl_reward_penalty
from lab.rl.ppo import ppo


def test_registered_with_paper():
    entry = info("reward", "kl_penalty")
    assert entry.arxiv == "1909.08593" and entry.module == "lab.rewards.kl_penalty"


def test_hand_computed_spec_example():
    # spec: ℓ = −1.0, ℓ^ref = −1.5 -> k1 = 0.5, k3 = e^{−0.5} − 1 + 0.5 = 0.10653
    r = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    old = torch.tensor([[-1.0, -1.0, -3.0], [-1.0, -2.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.5, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)     # row 1 empty, one padded token
    shaped, m = kl_reward_penalty(r, old, ref, mask, beta=0.1)
    assert torch.allclose(shaped, torch.tensor([[-0.05, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert m["kl_reward/kl"] == pytest.approx(0.25) and m["kl_reward/penalty"] == pytest.approx(0.025)
    shaped3, _ = kl_reward_penalty(r, old, ref, mask, beta=0.1, kl_estimator="k3")
    assert shaped3[0, 0].item() == pytest.approx(-0.1 * (math.exp(-0.5) - 0.5))
    # summed over a response: R − β Σ_t KL (TRL RLOO's sequence-level penalty)
    assert shaped.sum(-1).tolist() == pytest.approx([1.0 - 0.1 * 0.5, 0.0])


def test_beta_zero_and_equal_policies_leave_rewards_unchanged():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(4, 5, generator=g)
    lp = -torch.rand(4, 5, generator=g)
    mask = torch.ones(4, 5, dtype=torch.bool)
    assert torch.equal(kl_reward_penalty(r, lp, lp - 1.0, mask, beta=0.0)[0], r)
    assert torch.allclose(kl_reward_penalty(r, lp, lp, mask)[0], r)


def test_bad_input_names_the_argument():
    r, lp, mask = torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="beta"):
        kl_reward_penalty(r, lp, lp, mask, beta=-0.1)
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_reward_penalty(r, lp, lp, mask, kl_estimator="k4")
    with pytest.raises(ValueError, match="ref_logprobs"):
        kl_reward_penalty(r, lp, lp[:, :2], mask)
    with pytest.raises(ValueError, match="token_rewards"):
        kl_reward_penalty(torch.zeros(2), lp, lp, mask)
    with pytest.raises(ValueError, match="token_rewards"):
        kl_reward_penalty(torch.full((2, 3), float("nan")), lp, lp, mask)
    with pytest.raises(TypeError, match="token_rewards"):
        kl_reward_penalty([[0.0]], lp, lp, mask)
    with pytest.raises(ValueError, match="old_logprobs"):
        kl_reward_penalty(r, lp.clone().requires_grad_(True), lp, mask)


def _exact_policy_gradient(theta, ref_logp, reward_fn):
    """Σ_a π(a) r(a) ∇log π(a) for a one-step softmax policy (the exact REINFORCE expectation)."""
    logp = torch.log_softmax(theta, -1)
    r = reward_fn(logp.detach())
    return torch.autograd.grad((logp.exp().detach() * r * logp).sum(), theta)[0]


def test_k1_in_the_reward_is_the_kl_gradient_and_k1_in_the_loss_is_not():
    # one step, K actions: with the penalty in the reward, the exact policy gradient of the shaped
    # reward equals ∇[−β KL(π‖π_ref)]; a k1 *loss* term has zero expected gradient (E_π[∇ℓ] = 0),
    # which is why policy_loss/ppo defaults to k3 for its loss term
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), -1)
    beta = 0.3

    def shaped(logp):
        return kl_reward_penalty(torch.zeros(1, 6, dtype=torch.float64), logp[None], ref_logp[None],
                                 torch.ones(1, 6), beta=beta)[0][0]

    grad_reward = _exact_policy_gradient(theta, ref_logp, shaped)
    logp = torch.log_softmax(theta, -1)
    true_kl = (logp.exp() * (logp - ref_logp)).sum()
    grad_kl = torch.autograd.grad(-beta * true_kl, theta)[0]
    assert torch.allclose(grad_reward, grad_kl, atol=1e-12)
    # expected gradient of the k1 loss term β·(ℓ − ℓ^ref) under samples from π
    logp = torch.log_softmax(theta, -1)
    k1_loss = (logp.exp().detach() * beta * kl(logp, ref_logp, "k1")).sum()
    assert torch.autograd.grad(k1_loss, theta)[0].abs().max() < 1e-12
    assert grad_kl.abs().max() > 1e-2


def test_ppo_kl_loss_term_defaults_to_k3():
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -2.5]], dtype=torch.float64)
    mask = torch.ones(1, 2)
    loss, _ = ppo(lp, lp.detach(), torch.zeros(1, dtype=torch.float64), mask, ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (math.exp(-0.5) - 0.5))
    assert loss.item() == pytest.approx(0.1 * aggregate(kl(lp, ref, "k3"), mask).item())


def test_loop_applies_the_shaping_and_keeps_both_reward_views():
    h = E.run("policy_optimization", reward_shaping="kl_penalty(beta=0.2)", advantage="gae", loss="ppo",
              steps=3, n_prompts=4, group_size=4)
    assert {"kl_reward/kl", "kl_reward/penalty", "kl_reward/beta"} <= set(h.keys)
    assert h["kl_reward/beta"].tolist() == [0.2] * 3
    with pytest.raises(KeyError, match="kl_penalty"):
        E.run("policy_optimization", reward_shaping="no_such_shaping", steps=1)


def test_kl_in_the_reward_holds_the_policy_near_the_reference():
    # token bandit, tabular policy: a strong penalty keeps KL(π‖π_ref) far below the unpenalized run
    common = dict(advantage="rloo", loss="reinforce", steps=40, lr=0.2, seed=0)
    free = E.run("policy_optimization", **common)
    held = E.run("policy_optimization", reward_shaping="kl_penalty(beta=1.0)", **common)
    assert held["kl"][-10:].mean() < 0.5 * free["kl"][-10:].mean()
    assert free["kl"][-10:].mean() > 0.2


def test_where_the_kl_goes_k1_in_the_loss_is_no_penalty_at_all():
    # the four placements of lab.experiments.policy.kl_placements on the token bandit (β = 0.3,
    # 60 steps): KL(π_old‖π_ref) over the last 10 steps is 2.39 without a penalty, 2.26 with k1 in
    # the loss, 0.79 with k3 in the loss and 0.42 with k1 in the reward
    from lab.experiments.policy import kl_placements

    runs = kl_placements(beta=0.3, steps=60)          # 60 steps, as measured above (the default is 40)
    assert list(runs) == ["no KL", "k1 in the loss", "k3 in the loss", "k1 in the reward"]
    final = {label: h["kl"][-10:].mean() for label, h in runs.items()}
    assert abs(final["k1 in the loss"] - final["no KL"]) < 0.2 * final["no KL"]
    assert final["k3 in the loss"] < 0.7 * final["no KL"]
    assert final["k1 in the reward"] < 0.7 * final["no KL"]
    with pytest.raises(ValueError, match="beta"):
        kl_placements(beta=-1.0)


def test_adaptive_kl_penalty_hand_computed():
    from lab.rewards.kl_penalty import AdaptiveKLPenalty

    # e = clip(KL/target − 1, ±0.2): KL = 2 with target 1 -> +0.2, so β ← 0.1 (1 + 0.2 · 4/100)
    ctrl = AdaptiveKLPenalty(beta=0.1, target=1.0, horizon=100)
    assert ctrl.update(2.0, 4) == pytest.approx(0.1008)
    assert ctrl.update(0.5, 4) == pytest.approx(0.1008 * (1 - 0.2 * 4 / 100))       # e = −0.5 -> −0.2
    assert ctrl.update(1.1, 100) == pytest.approx(0.1008 * 0.992 * 1.1)              # e = 0.1 unclipped
    # in a batch: the penalty uses the β from before the update; the sequence KL drives the update
    ctrl = AdaptiveKLPenalty(beta=0.1, target=1.0, horizon=100)
    r = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    old = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    ref = torch.tensor([[-2.0, -2.0], [-1.0, -1.0]])            # sequence k1 KL: 2 and 0 -> mean 1
    shaped, m = ctrl(r, old, ref, torch.ones(2, 2))
    assert torch.allclose(shaped, torch.tensor([[-0.1, 0.9], [0.0, 1.0]]))
    assert m["kl_reward/beta"] == 0.1 and m["kl_reward/seq_kl"] == pytest.approx(1.0)
    assert m["kl_reward/next_beta"] == pytest.approx(0.1) == ctrl.beta               # e = 0
    clone = AdaptiveKLPenalty()
    clone.load_state_dict(ctrl.state_dict())
    assert clone.state_dict() == ctrl.state_dict()
    for kwargs, name in [(dict(beta=0.0), "beta"), (dict(target=-1.0), "target"), (dict(horizon=0), "horizon"),
                         (dict(kl_estimator="k9"), "kl_estimator")]:
        with pytest.raises(ValueError, match=name):
            AdaptiveKLPenalty(**kwargs)


def test_adaptive_kl_penalty_raises_beta_until_the_kl_comes_down():
    # token bandit, 80 steps: a fixed β = 0.05 lets KL(π‖π_ref) drift to about 1.0; the adaptive
    # controller (target 0.3) raises β from 0.05 to about 0.8 and brings the KL back to about 0.5
    fixed = E.run("policy_optimization", reward_shaping="kl_penalty(beta=0.05)", steps=80, lr=0.1)
    adaptive = E.run("policy_optimization", steps=80, lr=0.1,
                     reward_shaping="adaptive_kl_penalty(beta=0.05, target=0.3, horizon=200)")
    beta = adaptive["kl_reward/beta"]
    assert beta[-1] > 5 * beta[0]
    assert adaptive["kl"][-20:].mean() < 0.75 * fixed["kl"][-20:].mean()
