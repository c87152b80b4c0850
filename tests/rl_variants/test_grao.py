"""GRAO: exploration + advantage-weighted imitation of a reference answer + alignment."""
import pytest
import torch

from lab.registry import get
from lab.rl.grao import grao, grao_advantages


def _example(**kwargs):
    # J_expl = [−1, −2, −1.5] (one-token answers), J_imit = −1.2 (two-token reference)
    lp = torch.tensor([[-1.0], [-2.0], [-1.5]], requires_grad=True)
    demo = torch.tensor([[-1.2, -1.2]], requires_grad=True)
    loss, metrics = grao(lp, None, torch.zeros(3), torch.ones(3, 1), rewards=torch.tensor([1.0, 0.0, 0.5]),
                         group_size=3, demo_logprobs=demo, **kwargs)
    return loss, metrics, lp, demo


# ---------------------------------------------------------------- hand-computed values
def test_spec_example_advantages():
    adv_o, adv_y, _ = grao_advantages(torch.tensor([1.0, 0.0, 0.5]), 1.0, group_size=3)
    # over {1, 0, 0.5, 1}: μ = 0.625, σ_pop = 0.4146
    assert adv_o.tolist() == pytest.approx([0.905, -1.508, -0.302], abs=1e-3)
    assert adv_y.tolist() == pytest.approx([0.905], abs=1e-3)


def test_spec_example_loss_and_gradients():
    loss, metrics, lp, demo = _example()
    loss.backward()
    assert loss.item() == pytest.approx(-0.607, abs=1e-3)
    a = torch.tensor([0.9045, -1.5076, -0.3015])
    # ∂(−J)/∂J_expl_i = −(Â_i + λÂ_i)/G;  ∂(−J)/∂J_imit = −(βÂ_y − λ mean Â_o)
    assert lp.grad.flatten().tolist() == pytest.approx((-(1 + 0.6) * a / 3).tolist(), abs=1e-3)
    d_imit = -(0.5 * 0.9045 - 0.6 * a.mean().item())
    assert demo.grad.flatten().tolist() == pytest.approx([d_imit / 2] * 2, abs=1e-3)
    assert metrics["clip_frac"] == 0.0
    assert metrics["grao/imitation_logprob"] == pytest.approx(-1.2)


# ---------------------------------------------------------------- limiting cases
def test_no_imitation_no_alignment_is_grpo_seq_mean_token_mean():
    g = torch.Generator().manual_seed(0)
    lp = torch.log(torch.rand(6, 4, generator=g)).requires_grad_()
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]] * 2)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.1])
    loss, _ = grao(lp, None, torch.zeros(6), mask, rewards=rewards, group_size=3, imitation_coef=0.0,
                   lam=0.0, include_reference=False)
    adv, _ = get("advantage", "grpo")(rewards, group_size=3, std="population")
    ref, _ = get("policy_loss", "grpo")(lp, None, adv, mask, beta=0.0)
    grad = torch.autograd.grad(loss, lp)[0]
    grad_ref = torch.autograd.grad(ref, lp)[0]
    assert torch.allclose(grad, grad_ref, atol=1e-5)


def test_imitation_follows_the_reference_advantage_sign():
    # a reference better than the samples is imitated; a worse one is pushed down (eq. 3)
    for ref_reward, sign in ((1.0, -1), (0.0, +1)):
        lp = torch.zeros(3, 1, requires_grad=True)
        demo = torch.full((1, 2), -1.0, requires_grad=True)
        loss, m = grao(lp, None, torch.zeros(3), torch.ones(3, 1), rewards=torch.tensor([0.6, 0.3, 0.5]),
                       group_size=3, demo_logprobs=demo, ref_reward=ref_reward, lam=0.0)
        loss.backward()
        assert torch.sign(demo.grad).flatten().tolist() == [sign, sign]   # −∂J: descent raises ℓ_y iff < 0


def test_without_demonstrations_only_exploration_remains():
    lp = torch.zeros(3, 1, requires_grad=True)
    loss, m = grao(lp, None, torch.zeros(3), torch.ones(3, 1), rewards=torch.tensor([1.0, 0.0, 0.5]),
                   group_size=3)
    assert m["grao/imitation"] == 0.0 and m["grao/alignment"] == 0.0


# ---------------------------------------------------------------- edge cases and bad input
def test_all_equal_rewards_give_zero_loss():
    lp = torch.zeros(2, 1, requires_grad=True)
    loss, _ = grao(lp, None, torch.zeros(2), torch.ones(2, 1), rewards=torch.ones(2), group_size=2,
                   demo_logprobs=torch.zeros(1, 3, requires_grad=True))
    loss.backward()
    assert loss.item() == 0.0 and (lp.grad == 0).all()


def test_sample_only_statistics_flag():
    with_ref, _, _ = grao_advantages(torch.tensor([1.0, 0.0]), 1.0, group_size=2)
    without, adv_y, _ = grao_advantages(torch.tensor([1.0, 0.0]), 1.0, group_size=2,
                                        include_reference=False)
    assert without.tolist() == pytest.approx([1.0, -1.0], abs=1e-5)
    assert with_ref.tolist() != without.tolist() and adv_y.item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"demo_logprobs": torch.zeros(2, 3)}, "demo_logprobs"),
    ({"ref_reward": torch.ones(2)}, "ref_reward"),
    ({"lam": -0.1}, "lam"),
    ({"rewards": torch.tensor([1.0, float("nan"), 0.0])}, "rewards"),
])
def test_bad_input_names_the_argument(kwargs, match):
    kwargs.setdefault("rewards", torch.tensor([1.0, 0.0, 0.5]))
    with pytest.raises(ValueError, match=match):
        grao(torch.zeros(3, 1, requires_grad=True), None, torch.zeros(3), torch.ones(3, 1),
             group_size=3, **kwargs)


def test_through_the_training_loop_without_demonstrations():
    # the loop provides no reference answers: the imitation term is 0, the exploration term trains,
    # R(y) = 1 is in the statistics (the reference beats the samples: Â_y > 0 on every batch), and
    # with two epochs the ratio leaves 1 but GRAO has nothing to clip
    import numpy as np
    from lab.experiments import run
    h = run("policy_optimization", advantage="grpo", loss="grao", task="token_bandit", steps=4, epochs=2)
    assert np.all(h["grao/imitation"] == 0) and np.all(h["grao/imitation_logprob"] == 0)
    assert np.all(h["grao/adv_ref_mean"] > 0) and np.all(h["grad_norm"] > 0)
    assert np.all(h["ratio_max"] > 1.0) and np.all(h["clip_frac"] == 0)


def test_reference_reward_defaults_to_a_correct_answer():
    # R(y) = 1.0 unless given: the reference answer of a verifiable task is correct
    def run(**kw):
        lp = torch.zeros(3, 1, requires_grad=True)
        demo = torch.full((1, 2), -1.0, requires_grad=True)
        return grao(lp, None, torch.zeros(3), torch.ones(3, 1), rewards=torch.tensor([0.6, 0.3, 0.5]),
                    group_size=3, demo_logprobs=demo, **kw)[0].item()
    assert run() == pytest.approx(run(ref_reward=1.0))
    assert run() != pytest.approx(run(ref_reward=0.0))
