"""HAPO: token-level group average, entropy signal h̃, adaptive clipping, adaptive temperature."""
import math

import pytest
import torch

from lab.registry import get
from lab.rl import clipped_policy_loss
from lab.sampling.adaptive_temperature import AdaptiveTemperature
from lab.rl.hapo import (
    adaptive_clip_bounds, adaptive_clipped_surrogate, fit_entropy_scale, hapo,
    hapo_token_advantages, normalized_entropy, redistribute_advantages,
)


# ---------------------------------------------------------------- token-level group average
def test_spec_example_token_level_group_average():
    # Prepare: R = [1, 0], lengths [2, 4] -> token rewards (1, 1, 0, 0, 0, 0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    # Execute
    adv, metrics = hapo_token_advantages(torch.tensor([1.0, 0.0]), mask=mask, group_size=2)
    # Assert: μ = 1/3, σ_pop = 0.4714 -> [1.4142, −0.7071] (GRPO: ±0.7071)
    assert adv.tolist() == pytest.approx([1.4142, -0.7071], abs=1e-4)
    assert metrics["hapo/frac_fallback_groups"] == 0.0


def test_equal_lengths_equal_population_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.2])
    adv, _ = hapo_token_advantages(rewards, mask=torch.ones(6, 3), group_size=3)
    grpo, _ = get("advantage", "grpo")(rewards, group_size=3, std="population")
    assert torch.allclose(adv, grpo, atol=1e-5)


def test_extreme_advantage_falls_back_to_grpo():
    # one long wrong answer among short right ones: the token-level |A| exceeds 5
    mask = torch.zeros(2, 60)
    mask[0, :1], mask[1, :] = 1, 1
    rewards = torch.tensor([1.0, 0.0])
    adv, metrics = hapo_token_advantages(rewards, mask=mask, group_size=2)
    grpo, _ = get("advantage", "grpo")(rewards, group_size=2)
    assert metrics["hapo/frac_fallback_groups"] == 1.0
    assert torch.allclose(adv, grpo)
    adv_hi, m_hi = hapo_token_advantages(rewards, mask=mask, group_size=2, fallback_abs=100.0)
    assert m_hi["hapo/frac_fallback_groups"] == 0.0 and adv_hi[0] > 5


def test_empty_rows_and_equal_rewards_give_zero():
    adv, _ = hapo_token_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]),
                                   mask=torch.tensor([[0, 0], [1, 1], [1, 0], [1, 1]]), group_size=2)
    assert adv[0] == 0.0 and adv[2:].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- entropy signal and bounds
def test_normalized_entropy_range_and_pivot():
    g = torch.Generator().manual_seed(0)
    entropy = torch.rand(6, 10, generator=g) * 3
    h = normalized_entropy(entropy, torch.ones(6, 10))
    assert h.max().item() == pytest.approx(1.0) and h.min().item() == pytest.approx(-1.0)
    # about 20% of tokens lie above the 0.8-quantile pivot
    assert 0.15 <= (h > 0).float().mean().item() <= 0.25
    # monotone in the entropy
    order = torch.argsort(entropy.flatten())
    assert (h.flatten()[order].diff() >= -1e-6).all()


def test_code_sign_bug_flips_confident_tokens():
    entropy = torch.tensor([[0.1, 0.5, 1.0, 2.0, 3.0]])
    paper = normalized_entropy(entropy)
    code = normalized_entropy(entropy, replicate_code_sign_bug=True)
    low = paper < 0
    assert torch.allclose(code[low], -paper[low]) and torch.equal(code[~low], paper[~low])


def test_equal_entropies_give_no_modulation():
    assert normalized_entropy(torch.full((2, 3), 0.7)).abs().max() == 0.0


def test_spec_example_clip_bounds():
    eps_low, eps_high = adaptive_clip_bounds(torch.tensor([0.5, -0.5, 0.0]), 0.2, 0.2, 1.0)
    assert eps_high.tolist() == pytest.approx([0.3, 0.2, 0.2])
    assert eps_low.tolist() == pytest.approx([0.2, 0.3, 0.2])


def test_redistribution_rule():
    adv = torch.ones(4)
    h = torch.tensor([0.5, 0.5, -0.5, -0.5])
    rho = torch.tensor([1.0, 1.5, 1.0, 1.5])                  # inside / outside the neutral zone
    eps = torch.full((4,), 0.2)
    out = redistribute_advantages(adv, h, rho, eps, eps, adv_beta=1.0)
    # h̃ > 0: A inside, A(1 + h̃) outside;  h̃ ≤ 0: A(1 + h̃) inside, A outside
    assert out.tolist() == pytest.approx([1.0, 1.5, 0.5, 1.0])


# ---------------------------------------------------------------- the loss
def test_scalar_bounds_reduce_to_the_core_surrogate():
    g = torch.Generator().manual_seed(1)
    rho = torch.exp(0.5 * torch.randn(4, 5, generator=g))
    adv = torch.randn(4, 5, generator=g)
    ours, _ = adaptive_clipped_surrogate(rho, adv, torch.full_like(rho, 0.2), torch.full_like(rho, 0.28), 10.0)
    lp = torch.log(rho)
    _, m = clipped_policy_loss(lp, torch.zeros_like(lp), adv, torch.ones(4, 5), clip_eps_high=0.28,
                               dual_clip=10.0, return_per_token=True)
    assert torch.allclose(ours, m["per_token_loss"], atol=1e-6)


def test_without_modulation_hapo_equals_dual_clip_ppo():
    g = torch.Generator().manual_seed(2)
    lp = torch.log(torch.rand(3, 4, generator=g)).requires_grad_()
    old = lp.detach() + 0.2 * torch.randn(3, 4, generator=g)
    adv, mask = torch.tensor([1.0, -1.0, 0.5]), torch.ones(3, 4)
    entropy = torch.rand(3, 4, generator=g)
    loss, _ = hapo(lp, old, adv, mask, entropy=entropy, adaptive_advantage=False, adaptive_clip=False)
    ref, _ = clipped_policy_loss(lp, old, adv, mask, dual_clip=10.0)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-7)


def test_high_entropy_token_is_not_clipped_where_ppo_clips():
    # Prepare: ρ = 1.25, A = 1 on the most uncertain token (h̃ = 1 -> ε_high,t = 0.4)
    entropy = torch.tensor([[0.1, 0.2, 0.3, 2.0]])
    lp = torch.log(torch.full((1, 4), 1.25)).requires_grad_()
    loss, m = hapo(lp, torch.zeros(1, 4), torch.ones(1), torch.ones(1, 4), entropy=entropy,
                   adaptive_advantage=False, return_per_token=True)
    loss.backward()
    assert m["eps_high"][0, 3].item() == pytest.approx(0.4)
    assert lp.grad[0, 3] != 0 and (lp.grad[0, :3] == 0).all()   # only the uncertain token moves


def test_entropy_required_and_metrics():
    with pytest.raises(TypeError, match="entropy"):
        hapo(torch.zeros(1, 2, requires_grad=True), None, torch.ones(1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="entropy"):
        hapo(torch.zeros(1, 2, requires_grad=True), None, torch.ones(1), torch.ones(1, 2),
             entropy=torch.ones(2, 2))
    loss, m = hapo(torch.zeros(1, 2, requires_grad=True), None, torch.ones(1), torch.zeros(1, 2),
                   entropy=torch.ones(1, 2))
    assert loss.item() == 0.0 and m["num_tokens"] == 0.0


# ---------------------------------------------------------------- adaptive temperature
def test_adaptive_temperature_hotter_at_uncertain_positions(generator):
    sampler = AdaptiveTemperature(temperature=1.0, tau=0.05)
    confident = torch.tensor([[8.0, 0.0, 0.0, 0.0]])
    uncertain = torch.zeros(1, 4)
    logits = torch.cat([confident, uncertain])
    assert sampler.temperatures(logits).tolist() == [1.0, 1.0]          # no statistics yet
    entropy = torch.rand(8, 6, generator=generator) * math.log(4)
    sampler.update(entropy, torch.ones(8, 6))
    temps = sampler.temperatures(logits)
    assert temps[0] < 1.0 < temps[1] and temps.max() <= 1.05 + 1e-6 and temps.min() >= 0.95 - 1e-6
    tokens, metrics = sampler.select(logits, generator=generator)
    assert tokens.shape == (2,) and metrics["temperature_max"] == pytest.approx(temps.max().item())


def test_adaptive_temperature_state_round_trip(generator):
    sampler = AdaptiveTemperature(tau=0.1)
    sampler.update(torch.rand(4, 5, generator=generator), torch.ones(4, 5))
    other = AdaptiveTemperature()
    other.load_state_dict(sampler.state_dict())
    logits = torch.randn(3, 7, generator=generator)
    assert torch.equal(other.temperatures(logits), sampler.temperatures(logits))
    with pytest.raises(ValueError, match="temperature"):
        AdaptiveTemperature(temperature=0.0)


def test_fit_scale_of_empty_mask_is_neutral():
    scale = fit_entropy_scale(torch.ones(2, 2), torch.zeros(2, 2))
    assert scale.scale_pos == 1.0 and scale.pivot == 0.0


# ---------------------------------------------------------------- behaviour through the loop
@pytest.mark.slow
def test_entropy_stays_higher_than_grpo_on_the_same_seed():
    # contextual token bandit, 2 epochs per rollout; same seed, task and budget for both
    from lab.experiments import run
    kwargs = dict(task="token_bandit(n_contexts=4)", steps=40, epochs=2, seed=0)
    grpo = run("policy_optimization", advantage="grpo", loss="grpo(beta=0.0)", **kwargs)
    hapo_run = run("policy_optimization", advantage="hapo_token", loss="hapo", **kwargs)
    assert hapo_run["entropy"][-10:].mean() > grpo["entropy"][-10:].mean() + 0.2
    assert hapo_run["entropy"].mean() > grpo["entropy"].mean()
    assert hapo_run["reward"][-10:].mean() > 0.6            # and it still learns


def test_head_to_head_runs_each_method_on_the_same_seed():
    from lab.experiments.zoo import HeadToHeadConfig, head_to_head, split_method
    from lab.viz.zoo import head_to_head_figure
    runs = head_to_head(HeadToHeadConfig(methods=("grpo + grpo(beta=0.0)", "hapo_token + hapo"), steps=2,
                                         task="token_bandit"))
    assert list(runs) == ["grpo + grpo(beta=0.0)", "hapo_token + hapo"]
    # same seed: the first rollout (before any update) is identical
    assert runs["grpo + grpo(beta=0.0)"]["reward"][0] == runs["hapo_token + hapo"]["reward"][0]
    assert len(head_to_head_figure(runs).data) > 0
    with pytest.raises(KeyError, match="policy_loss"):
        split_method("grpo + nonexistent")
    with pytest.raises(ValueError, match="advantage \\+ loss"):
        split_method("grpo")


def test_adaptive_temperature_code_sign_bug_never_cools(generator):
    # the released code maps negative h to positive h̃: the confident row is then heated, not cooled
    logits = torch.tensor([[8.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    entropy = torch.rand(8, 6, generator=generator) * math.log(4)
    paper, code = AdaptiveTemperature(tau=0.05), AdaptiveTemperature(tau=0.05, replicate_code_sign_bug=True)
    for sampler in (paper, code):
        sampler.update(entropy, torch.ones(8, 6))
    assert paper.temperatures(logits)[0] < 1.0
    assert (code.temperatures(logits) >= 1.0).all()
