"""Probability path, samplers and per-step log-probs (lab.flow.core), the velocity field, the toy."""
import math

import numpy as np
import pytest
import torch

from lab.flow.core import (diffusion_coef, flow_path, gaussian_logprob, rollout, sde_mean, sigmas,
                           transition_logprobs)
from lab.models.velocity import VelocityField
from toy_envs.flow2d import energy_distance, make_reward, mode_centers, modes_covered, sample_target


def test_flow_path_by_hand():
    # Prepare: x0 = (1, 2), noise = (3, -1), t = 0.25
    x0, noise, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor([0.25])
    # Execute
    x_t, u = flow_path(x0, noise, t)
    # Assert: x_t = 0.75·x0 + 0.25·noise, u = noise − x0
    torch.testing.assert_close(x_t, torch.tensor([[1.5, 1.25]]))
    torch.testing.assert_close(u, torch.tensor([[2.0, -3.0]]))


def test_grid_and_diffusion_coefficients_by_hand():
    torch.testing.assert_close(sigmas(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert float(sigmas(2, shift=3.0)[1]) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    assert diffusion_coef(0.5, 0.25, "flow_grpo", 0.7) == pytest.approx(0.7)
    assert diffusion_coef(1.0, 0.75, "flow_grpo", 0.7) == pytest.approx(0.7 * math.sqrt(1 / 0.25))
    assert diffusion_coef(0.3, 0.2, "dance", 0.4) == 0.4 and diffusion_coef(0.3, 0.2, "ode") == 0.0


def test_sde_mean_by_hand_and_dancegrpo_form_is_the_same_function():
    # μ = 1 + (2 + (1²/(2·0.5))·(1 + 0.5·2))·(−0.25) = 0
    assert float(sde_mean(torch.tensor(1.0), torch.tensor(2.0), 0.5, 0.25, 1.0)) == pytest.approx(0.0)
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(5, 2, generator=gen), torch.randn(5, 2, generator=gen)
    sigma, sigma_next, eta = 0.6, 0.45, 0.8
    d_sigma = sigma_next - sigma
    score = -(x + (1 - sigma) * v) / sigma                  # DanceGRPO's flux_step written out
    dance = x + d_sigma * v + d_sigma * (-0.5 * eta ** 2 * score)
    torch.testing.assert_close(sde_mean(x, v, sigma, sigma_next, eta), dance)


def test_gaussian_logprob_is_the_mean_over_coordinates():
    x, mean = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.0, 0.5]])
    expected = torch.distributions.Normal(mean, 0.7).log_prob(x).mean(-1)
    torch.testing.assert_close(gaussian_logprob(x, mean, 0.7), expected)


def _gaussian_velocity(m, s):
    """Exact marginal velocity E[ε − x0 | x_t] for data N(m, s² I)."""
    def v(x, t):
        var = (1 - t) ** 2 * s ** 2 + t ** 2
        centred = x - (1 - t) * m
        return (t / var) * centred - (m + (1 - t) * s ** 2 / var * centred)
    return v


@pytest.mark.parametrize("schedule", ["ode", "flow_grpo", "dance"])
def test_sde_and_ode_samplers_share_the_data_marginal(schedule):
    m, s = torch.tensor([2.0, -1.0]), 0.5
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(2000, 2, generator=gen)
    out = rollout(_gaussian_velocity(m, s), noise, sigmas(40), schedule=schedule, noise_level=0.5,
                  generator=gen).samples
    torch.testing.assert_close(out.mean(0), m, atol=0.05, rtol=0)
    torch.testing.assert_close(out.std(0), torch.full((2,), s), atol=0.05, rtol=0)


def test_rescoring_with_the_sampling_field_gives_ratio_one_and_deterministic_steps_are_zero():
    field = VelocityField(hidden=16)
    gen = torch.Generator().manual_seed(0)
    active = torch.tensor([True, False, True, True])
    traj = rollout(lambda x, t: field(x, t), torch.randn(6, 2, generator=gen), sigmas(4),
                   schedule="flow_grpo", generator=gen, sde_steps=active)
    assert (traj.logprobs[:, 1] == 0).all() and torch.equal(traj.stochastic, active)
    logp, means = transition_logprobs(lambda x, t: field(x, t), traj)
    torch.testing.assert_close(logp, traj.logprobs[:, active])
    assert means.shape == (3, 6, 2) and logp.requires_grad
    # one batched call (a time per row) gives the same numbers and the same gradient
    batched, batched_means = transition_logprobs(lambda x, t: field(x, t), traj, batched=True)
    torch.testing.assert_close(batched, logp)
    torch.testing.assert_close(batched_means, means)
    g_loop = torch.autograd.grad(logp.sum(), list(field.parameters()))
    g_batch = torch.autograd.grad(batched.sum(), list(field.parameters()))
    for a, b in zip(g_loop, g_batch):
        torch.testing.assert_close(a, b)
    # a subset of the chains re-scores to the matching rows
    index = torch.tensor([4, 1])
    sub, _ = transition_logprobs(lambda x, t: field(x, t), traj.subset(index), batched=True)
    torch.testing.assert_close(sub, logp[index])


def test_truncated_backprop_keeps_gradients_only_in_the_last_steps():
    theta = torch.tensor(0.5, requires_grad=True)
    velocity = lambda x, t: theta * x  # noqa: E731  linear field: x_{j+1} = x_j (1 − θ Δσ)
    noise, grid = torch.ones(1, 2), sigmas(4)
    full = rollout(velocity, noise, grid, grad_steps=4).samples.sum()
    (g_full,) = torch.autograd.grad(full, theta)
    # x_S = Π_j (1 − θ/4) · 1, derivative 4 · (−1/4)(1 − θ/4)^3 per coordinate
    assert float(g_full) == pytest.approx(2 * -(1 - 0.125) ** 3, rel=1e-5)
    last = rollout(velocity, noise, grid, grad_steps=1).samples.sum()
    (g_last,) = torch.autograd.grad(last, theta)
    assert float(g_last) == pytest.approx(2 * -0.25 * (1 - 0.125) ** 3, rel=1e-5)
    assert not rollout(velocity, noise, grid).samples.requires_grad


def test_bad_inputs_name_the_argument():
    field = VelocityField(hidden=8)
    with pytest.raises(ValueError, match="generator"):
        rollout(lambda x, t: field(x, t), torch.zeros(2, 2), sigmas(3), schedule="flow_grpo")
    with pytest.raises(ValueError, match="sde_steps"):
        rollout(lambda x, t: field(x, t), torch.zeros(2, 2), sigmas(3), sde_steps=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_steps"):
        sigmas(0)
    with pytest.raises(ValueError, match="schedule"):
        diffusion_coef(0.5, 0.4, "vp")
    with pytest.raises(ValueError, match="x0 and noise"):
        flow_path(torch.zeros(2, 2), torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="x must have shape"):
        field(torch.zeros(3, 3), 0.5)
    with pytest.raises(ValueError, match="t_embed"):
        VelocityField(t_embed=5)
    with pytest.raises(ValueError, match="cond"):
        field(torch.zeros(2, 2), 0.5, torch.zeros(2, dtype=torch.long))


def test_conditional_field_null_class_and_time_shapes():
    field = VelocityField(hidden=8, n_classes=3)
    x = torch.zeros(4, 2)
    torch.testing.assert_close(field(x, 0.3), field(x, torch.full((4,), 0.3), torch.full((4,), 3)))
    assert field(x, 0.3, torch.zeros(4, dtype=torch.long)).shape == (4, 2)


def test_toy_targets_rewards_and_metrics():
    gen = torch.Generator().manual_seed(0)
    x, labels = sample_target("gaussians8", 2000, gen)
    centers = mode_centers()
    assert modes_covered(x, centers) == 8 and x.norm(dim=-1).mean() == pytest.approx(4.0, abs=0.1)
    torch.testing.assert_close(x[labels == 2].mean(0), centers[2], atol=0.05, rtol=0)
    assert sample_target("moons", 10, gen)[0].shape == (10, 2)
    pts = torch.tensor([[4.0, 0.0], [4.5, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(make_reward("dense")(pts), [1.0, math.exp(-0.25 / 0.5), math.exp(-16 / 0.5)], rtol=1e-6)
    np.testing.assert_allclose(make_reward("sparse")(pts), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(make_reward("linear")(pts), [4.0, 4.5, 0.0])
    assert energy_distance(x[:200], x[:200]) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x[:200], x[200:400]) < 0.1 < energy_distance(x[:200], x[:200] + 2.0)
    with pytest.raises(ValueError, match="name"):
        make_reward("dense_typo")
    with pytest.raises(ValueError, match="target"):
        sample_target("spirals", 3, gen)
