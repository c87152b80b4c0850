"""Hand-checked values, invariants, limits and errors of every flow_loss."""
import math

import pytest
import torch

from lab import registry
from lab.flow.ac_flow import ac_flow_loss, critic_weights, shape_rewards
from lab.flow.apg import apg_guidance
from lab.flow.awm import awm_loss
from lab.flow.b2_diffurl import b2_diffurl_loss, branch_advantages, window_steps
from lab.flow.cfm import cfm_loss, wcfm_loss, wcfm_weights
from lab.flow.curriculum import DifficultyCurriculum
from lab.flow.ddpo import ddpo_advantages, ddpo_loss
from lab.flow.flow_grpo import flow_grpo_advantages, flow_grpo_kl, flow_grpo_loss, gaussian_mean_kl

CATALOG = ["cfm", "wcfm", "ddpo", "flow_grpo", "awm", "ac_flow", "alignprop", "b2_diffurl", "apg",
           "difficulty_curriculum", "diffier"]


def test_every_catalog_name_is_registered_with_a_paper():
    for name in CATALOG:
        entry = registry.info("flow_loss", name)
        assert entry.paper and entry.arxiv


def test_cfm_by_hand():
    # v = (1, 0), target ε − x0 = (0, 1): error 1 + 1 = 2
    loss, _ = cfm_loss(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]))
    assert float(loss) == pytest.approx(2.0)


def test_wcfm_gibbs_weights_by_hand_and_infinite_temperature_is_cfm():
    x0, noise = torch.zeros(2, 2), torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # costs 0, 1; median 0.5
    w = wcfm_weights(x0, noise, epsilon=1.0)
    raw = torch.tensor([1.0, math.exp(-1 / 0.5)])
    torch.testing.assert_close(w, raw / raw.mean())
    gen = torch.Generator().manual_seed(0)
    v, x0, noise = (torch.randn(16, 2, generator=gen) for _ in range(3))
    torch.testing.assert_close(wcfm_loss(v, x0, noise, epsilon=math.inf)[0], cfm_loss(v, x0, noise)[0])
    near = wcfm_loss(v, x0, noise, epsilon=1e6)[0]
    assert float(near) == pytest.approx(float(cfm_loss(v, x0, noise)[0]), rel=1e-4)
    ess = [wcfm_loss(v, x0, noise, epsilon=e)[1]["ess"] for e in (10.0, 1.0, 0.1)]
    assert ess[0] > ess[1] > ess[2]   # colder kernel -> fewer effective pairs
    with pytest.raises(ValueError, match="epsilon"):
        wcfm_weights(x0, noise, epsilon=-1.0)


def test_ddpo_on_policy_gradient_is_reinforce_and_clipped_steps_have_none():
    adv = torch.tensor([1.0, -2.0])
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, metrics = ddpo_loss(logp, logp.detach(), adv)
    loss.backward()
    # ρ = 1: d/dℓ_ij of mean(−A_i ρ_ij) = −A_i / (B·S)
    torch.testing.assert_close(logp.grad, -adv[:, None].expand(2, 3) / 6)
    assert metrics["clip_frac"] == 0.0 and metrics["ratio_mean"] == pytest.approx(1.0)
    moved = torch.full((2, 3), 0.1, requires_grad=True)        # ρ = e^0.1 outside 1 ± 1e-4
    loss, metrics = ddpo_loss(moved, torch.zeros(2, 3), torch.tensor([1.0, 1.0]))
    loss.backward()
    assert metrics["clip_frac"] == 1.0 and moved.grad.abs().max() == 0
    sf, _ = ddpo_loss(torch.ones(2, 3), torch.zeros(2, 3), adv, mode="sf")
    assert float(sf) == pytest.approx(-float(adv.mean()))


def test_ddpo_advantages_invariant_to_a_constant_clipped_and_finite_for_equal_rewards():
    r = torch.tensor([0.0, 1.0, 3.0, 2.0])
    torch.testing.assert_close(ddpo_advantages(r), ddpo_advantages(r + 10.0))
    assert ddpo_advantages(torch.tensor([0.0] * 99 + [1.0])).max() == 5.0
    assert torch.equal(ddpo_advantages(torch.ones(4)), torch.zeros(4))


def test_flow_grpo_group_advantages_by_hand():
    adv = flow_grpo_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), group_size=2)
    s = math.sqrt(2.0)  # unbiased std of (1, 3)
    torch.testing.assert_close(adv, torch.tensor([-1 / s, 1 / s, 0.0, 0.0]), atol=1e-5, rtol=0)
    glob = flow_grpo_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), group_size=2, global_std=True)
    torch.testing.assert_close(glob, torch.tensor([-1.0, 1.0, 0.0, 0.0]) / torch.tensor([1.0, 3.0, 0.0, 0.0]).std(),
                               atol=1e-5, rtol=0)


def test_flow_grpo_kl_is_the_reference_codes_term_by_hand():
    """The authors' train_sd3.py: ((μ − μ_ref)²).mean() / (2·std_dev_t²), std_dev_t = g (no sqrt|dt|)."""
    from lab.flow.core import rollout, sigmas, transition_logprobs

    # Prepare: one SDE step σ = 1 → 0.5 of two constant fields v = (1, 0) and v_ref = (0, 0).
    # At σ = 1 the score term multiplies (1 − σ)v = 0, so μ − μ_ref = (v − v_ref)·dt = (−0.5, 0).
    # g = a·sqrt(σ/(1 − σ_1)) = 0.7·sqrt(1/0.5) (the first step uses σ_1 in the denominator).
    g = 0.7 * math.sqrt(2.0)
    field = lambda x, t: torch.ones_like(x) * torch.tensor([1.0, 0.0])   # noqa: E731
    ref = lambda x, t: torch.zeros_like(x)                                 # noqa: E731
    gen = torch.Generator().manual_seed(0)
    traj = rollout(field, torch.randn(3, 2, generator=gen), sigmas(2), schedule="flow_grpo", generator=gen,
                   sde_steps=torch.tensor([True, False]))
    logp, mean = transition_logprobs(field, traj)
    _, ref_mean = transition_logprobs(ref, traj)
    # Execute
    loss, metrics = flow_grpo_loss(logp, logp.detach(), torch.zeros(3), mean=mean, ref_mean=ref_mean,
                                   std_dev_t=traj.coefs[traj.stochastic], beta=0.1)
    # Assert: mean_d (0.25, 0) / (2 g²) = 0.125 / (2 · 0.98)
    expected = 0.125 / (2 * g ** 2)
    assert float(traj.coefs[0]) == pytest.approx(g)
    assert metrics["kl"] == pytest.approx(expected, rel=1e-6)
    assert float(loss) == pytest.approx(0.1 * expected, rel=1e-6)       # ρ = 1, A = 0: only the KL
    torch.testing.assert_close(flow_grpo_kl(mean, ref_mean, traj.coefs[:1]), torch.full((3, 1), expected))
    # the exact Gaussian KL of the two steps (std g·sqrt|dt|) is 1/|dt| = 2 times larger
    exact = gaussian_mean_kl(mean, ref_mean, traj.stds[:1])
    torch.testing.assert_close(exact, torch.full((3, 1), 2 * expected))
    with pytest.raises(ValueError, match="std_dev_t"):
        flow_grpo_loss(logp, logp, torch.zeros(3), ref_mean=ref_mean, mean=mean)
    with pytest.raises(ValueError, match="std_dev_t must be positive"):
        flow_grpo_kl(mean, ref_mean, torch.zeros(1))


def test_awm_on_policy_gradient_is_advantage_weighted_flow_matching():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(6, 2, generator=gen, requires_grad=True)
    x0, noise = torch.randn(6, 2, generator=gen), torch.randn(6, 2, generator=gen)
    adv = torch.randn(6, generator=gen)
    loss, metrics = awm_loss(v, v.detach(), x0, noise, adv)
    (g_awm,) = torch.autograd.grad(loss, v)
    weighted = (adv * ((v - (noise - x0)) ** 2).mean(-1)).mean()
    (g_fm,) = torch.autograd.grad(weighted, v)
    torch.testing.assert_close(g_awm, g_fm)
    assert metrics["ratio_mean"] == pytest.approx(1.0)
    loss_kl, m = awm_loss(v, v.detach(), x0, noise, adv, v_ref=v.detach() + 1.0, beta=0.5)
    assert m["kl"] == pytest.approx(1.0) and float((loss_kl - loss).detach()) == pytest.approx(0.5)


def test_ac_flow_weights_clip_and_reduce_to_cfm():
    w = critic_weights(torch.tensor([100.0, 0.0, 0.0, 0.0]), adv_clip=2.0)
    e2 = math.exp(2.0)
    torch.testing.assert_close(w, 4 * torch.tensor([e2, 1, 1, 1]) / (e2 + 3))
    assert float(critic_weights(torch.tensor([100.0, 0.0, 0.0, 0.0]), adv_clip=None)[0]) == pytest.approx(4.0)
    gen = torch.Generator().manual_seed(1)
    v, x0, noise = (torch.randn(5, 2, generator=gen) for _ in range(3))
    loss, _ = ac_flow_loss(v, v, x0, noise, torch.zeros(5), alpha=3.0)   # equal A, v = v_ref
    torch.testing.assert_close(loss, cfm_loss(v, x0, noise)[0])
    torch.testing.assert_close(shape_rewards(torch.tensor([3.0, 1.0, 2.0]), "rank"), torch.tensor([0.5, -0.5, 0.0]))
    with pytest.raises(ValueError, match="tau"):
        critic_weights(torch.zeros(3), tau=0.0)
    with pytest.raises(ValueError, match="rewards"):
        shape_rewards(torch.tensor([1.0, float("nan")]))


def test_b2_diffurl_windows_grow_backward_and_branch_advantages_by_hand():
    assert window_steps(1, 10, 2).tolist() == [False] * 5 + [True] * 5
    assert window_steps(2, 10, 2).all() and window_steps(1, 3, 3).tolist() == [False, False, True]
    adv = branch_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0]))
    logp = torch.zeros(4, 2, requires_grad=True)
    loss, metrics = b2_diffurl_loss(logp, torch.zeros(4, 2), torch.tensor([1.0, 0.0, 0.0, 0.0]),
                                    torch.tensor([0, 0, 1, 1]))
    loss.backward()
    # on-policy (ρ = 1): L = −mean_ij A_i = 0 and ∂L/∂ℓ_ij = −A_i / (B·K); branch 1 (all 0) gives nothing
    assert metrics["informative_frac"] == 0.5 and float(loss.detach()) == 0.0
    torch.testing.assert_close(logp.grad, -torch.tensor([0.5, -0.5, 0.0, 0.0])[:, None].expand(4, 2) / 8)
    with pytest.raises(ValueError, match="stage"):
        window_steps(3, 10, 2)


def test_apg_limits_projection_rescale_and_momentum():
    gen = torch.Generator().manual_seed(2)
    d_c, d_u = torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen)
    cfg, _ = apg_guidance(d_c, d_u, guidance_scale=5.0, eta=1.0, momentum=0.0)
    torch.testing.assert_close(cfg, d_u + 5.0 * (d_c - d_u))              # CFG limit
    out, _ = apg_guidance(d_c, d_u, guidance_scale=5.0, eta=0.0, momentum=0.0)
    torch.testing.assert_close(((out - d_c) * d_c).sum(-1), torch.zeros(8), atol=1e-5, rtol=0)  # no parallel part
    big, _ = apg_guidance(d_c, d_u + 100.0, guidance_scale=50.0, norm_threshold=0.5, momentum=0.0)
    assert ((big - d_c).norm(dim=-1) <= 49.0 * 0.5 + 1e-4).all()            # bounded update
    _, buf = apg_guidance(d_c, d_u, momentum=-0.5, buffer=torch.ones(8, 2))
    torch.testing.assert_close(buf, d_c - d_u - 0.5)
    with pytest.raises(ValueError, match="norm_threshold"):
        apg_guidance(d_c, d_u, norm_threshold=-1.0)
    with pytest.raises(TypeError, match="guidance_scale"):
        apg_guidance(d_c, d_u, guidance_scale="high")


def test_curriculum_orders_timesteps_easy_first_and_ends_uniform():
    cur = DifficultyCurriculum(n_clusters=4, patience=3, max_stage_steps=100)
    gen = torch.Generator().manual_seed(0)
    assert cur.t_range() == (0.75, 1.0) and (cur.sample_t(100, gen) >= 0.75).all()
    means = []
    while not cur.done:
        means.append(float(cur.sample_t(2000, gen).mean()))
        for _ in range(10):
            if cur.update(1.0):              # a flat loss plateaus at once
                break
    assert means == sorted(means, reverse=True) and len(means) == 3
    assert cur.t_range() == (0.0, 1.0) and cur.update(1.0) is False
    improving = DifficultyCurriculum(n_clusters=3, patience=3, max_stage_steps=50)
    assert not any(improving.update(10.0 * 0.5 ** k) for k in range(20))   # still learning: stays
    with pytest.raises(ValueError, match="n_clusters"):
        DifficultyCurriculum(n_clusters=0)


def test_alignprop_backpropagates_the_reward_through_the_sampler():
    from lab.flow.alignprop import alignprop_loss
    from lab.flow.core import sigmas
    from lab.models.velocity import VelocityField

    field = VelocityField(hidden=8)
    noise, grid = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), sigmas(5)
    reward = lambda x: -((x - torch.tensor([4.0, 0.0])) ** 2).sum(-1)  # noqa: E731

    def grads(k):
        field.zero_grad()
        loss, metrics = alignprop_loss(lambda x, t: field(x, t), noise, grid, reward, backprop_steps=k)
        loss.backward()
        assert metrics["backprop_steps"] == k and metrics["samples"].shape == (16, 2)
        assert float(loss.detach()) == pytest.approx(-0.01 * float(reward(metrics["samples"]).mean()), rel=1e-5)
        return torch.cat([p.grad.flatten() for p in field.parameters()])

    full, last = grads(5), grads(1)
    assert full.abs().sum() > 0 and last.abs().sum() > 0 and not torch.allclose(full, last)
    with pytest.raises(ValueError, match="generator"):
        alignprop_loss(lambda x, t: field(x, t), noise, grid, reward, randomize=True)
    with pytest.raises(ValueError, match="loss_coeff"):
        alignprop_loss(lambda x, t: field(x, t), noise, grid, reward, loss_coeff=0.0)


def test_diffier_reconstruction_by_hand_on_a_linear_field():
    """v(x, t) = x, grid 1 → 0.5 → 0, one correction with γ = 0.1 (all the lab's choices, see the module)."""
    from lab.flow.diffier import diffier_sample

    # Prepare: x̂_0(x, t) = (1 − t)x. Step 0: x̂_0(x_0, 1) = 0, Euler x_1 = 0.5·x_0 = (1, 0);
    # e_0(x) = ½‖0.5·x‖², ∇e_0 = 0.25·x, so x_1 ← x_1·(1 − 0.025) = (0.975, 0).
    # Step 1: x_2 = 0.5·x_1 = x̂_0(x_1, 0.5), so the last jump and its gradient are 0.
    velocity = lambda x, t: x  # noqa: E731
    samples, info = diffier_sample(velocity, torch.tensor([[2.0, 0.0]]), torch.tensor([1.0, 0.5, 0.0]),
                                   iterations=1, step_size=0.1)
    # Assert: E = e_0 + e_1 = ½·(0.5·0.975)² + 0
    torch.testing.assert_close(samples, torch.tensor([[0.4875, 0.0]]))
    assert info["error_per_step"] == pytest.approx([0.5 * (0.5 * 0.975) ** 2, 0.0])
    assert info["accumulated_error"] == pytest.approx(0.5 * (0.5 * 0.975) ** 2)
    plain, info0 = diffier_sample(velocity, torch.tensor([[2.0, 0.0]]), torch.tensor([1.0, 0.5, 0.0]), iterations=0)
    assert info0["accumulated_error"] == pytest.approx(0.125) and float(plain[0, 0]) == pytest.approx(0.5)
    assert registry.info("flow_loss", "diffier").summary.startswith("[reconstruction]")
    with pytest.raises(ValueError, match="step_size"):
        diffier_sample(velocity, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), step_size=0.0)


# --- the choices the module docstrings state -------------------------------------------------
def test_wcfm_cold_kernel_stays_finite_because_the_min_cost_is_subtracted():
    x0, noise = torch.zeros(2, 2), torch.tensor([[100.0, 0.0], [101.0, 0.0]])   # costs 1e4 and 10201
    w = wcfm_weights(x0, noise, epsilon=1e-3)          # exp(−1e4/10.1) alone underflows to 0
    assert torch.isfinite(w).all() and float(w[0]) == pytest.approx(2.0, rel=1e-6)


def test_ddpo_and_flow_grpo_losses_clip_the_advantages_they_are_given():
    for mode in ("is", "sf"):
        logp = torch.zeros(2, 3, requires_grad=True)
        ddpo_loss(logp, logp.detach(), torch.tensor([10.0, -10.0]), mode=mode)[0].backward()
        torch.testing.assert_close(logp.grad, -torch.tensor([5.0, -5.0])[:, None].expand(2, 3) / 6)


def test_flow_grpo_beta_defaults_to_0_04():
    mean, ref = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    loss, metrics = flow_grpo_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2), mean=mean,
                                   ref_mean=ref, std_dev_t=torch.ones(1))
    assert metrics["kl"] == pytest.approx(0.5) and float(loss) == pytest.approx(0.04 * 0.5)


def test_awm_clips_the_advantages():
    v = torch.zeros(1, 2, requires_grad=True)
    x0, noise = torch.zeros(1, 2), torch.ones(1, 2)
    (g_big,) = torch.autograd.grad(awm_loss(v, v.detach(), x0, noise, torch.tensor([50.0]))[0], v)
    (g_five,) = torch.autograd.grad(awm_loss(v, v.detach(), x0, noise, torch.tensor([5.0]))[0], v)
    torch.testing.assert_close(g_big, g_five)


def test_ac_flow_w2_term_sums_coordinates_and_shaping_by_hand():
    gen = torch.Generator().manual_seed(3)
    v, x0, noise = (torch.randn(4, 2, generator=gen) for _ in range(3))
    loss, metrics = ac_flow_loss(v, v + 1.0, x0, noise, torch.zeros(4), alpha=0.5)
    assert metrics["kl"] == pytest.approx(2.0)                       # ‖(1, 1)‖² = 2 per sample
    torch.testing.assert_close(loss, cfm_loss(v, x0, noise)[0] + 0.5 * 2.0)
    torch.testing.assert_close(shape_rewards(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.0, 0.0, 1.0]),
                               atol=1e-5, rtol=0)                    # unbiased std of (1, 2, 3) is 1
    for kind in ("standardize", "rank"):                             # one reward: centred, i.e. 0
        assert torch.equal(shape_rewards(torch.tensor([7.0]), kind), torch.zeros(1))


def test_alignprop_caps_k_at_the_step_count_and_draws_it_with_randomize():
    from lab.flow.alignprop import alignprop_loss
    from lab.flow.core import sigmas

    field = lambda x, t: -x  # noqa: E731
    noise, grid = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)), sigmas(5)
    reward = lambda x: x[:, 0]  # noqa: E731
    assert alignprop_loss(field, noise, grid, reward, backprop_steps=100)[1]["backprop_steps"] == 5
    gen = torch.Generator().manual_seed(0)
    ks = {alignprop_loss(field, noise, grid, reward, backprop_steps=3, randomize=True, generator=gen)[1]
          ["backprop_steps"] for _ in range(40)}
    assert ks == {1, 2, 3}


def test_apg_buffer_is_the_momentum_difference_before_rescaling():
    d_c, d_u = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    _, buf = apg_guidance(d_c, d_u, norm_threshold=0.1, momentum=-0.5, buffer=torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(buf, torch.tensor([[2.0, -5.0]]))     # Δ + βΔ̄, not rescaled to norm 0.1


def test_guided_velocity_is_cfg_in_the_limit_and_advances_its_buffer_once_per_time():
    from lab.flow.apg import GuidedVelocity

    class Field(torch.nn.Module):        # v = 1 for a class, 0 for the null class (n_classes = 1)
        n_classes = 1

        def forward(self, x, t, c):
            return (c != self.n_classes).to(x.dtype)[:, None].expand_as(x)

    x, cond = torch.full((2, 2), 0.3), torch.zeros(2, dtype=torch.long)
    cfg = GuidedVelocity(Field(), cond, method="cfg", guidance_scale=3.0)
    torch.testing.assert_close(cfg(x, 1.0), torch.full((2, 2), 3.0))  # x̂_0 = x − t·(1 + (w − 1)·1)
    apg = GuidedVelocity(Field(), cond, method="apg", guidance_scale=3.0, eta=1.0, momentum=-0.5)
    torch.testing.assert_close(apg(x, 1.0), torch.full((2, 2), 3.0))  # Δ = −t = −1, no buffer yet
    torch.testing.assert_close(apg(x, 1.0), torch.full((2, 2), 3.0))  # same t: same start buffer
    # t = 0.5: Δ̄ = −0.5 + (−0.5)(−1) = 0, so the guided field is the conditional one, v = 1;
    # a second call at t = 0.5 starts again from the t = 1 buffer, not from its own
    torch.testing.assert_close(apg(x, 0.5), torch.ones(2, 2))
    torch.testing.assert_close(apg(x, 0.5), torch.ones(2, 2))


def test_curriculum_advances_after_max_stage_steps_and_resets_its_counters():
    cur = DifficultyCurriculum(n_clusters=3, patience=100, max_stage_steps=5)
    advanced = [cur.update(10.0 * 0.5 ** k) for k in range(5)]       # improving, but the cap is 5
    assert advanced == [False] * 4 + [True] and cur.stage == 2
    assert cur.state_dict() == {"stage": 2, "stage_steps": 0, "wait": 0, "smoothed": None, "best": math.inf}


def test_diffier_step_halving_never_increases_the_error():
    from lab.flow.diffier import diffier_sample

    velocity, noise, grid = (lambda x, t: x), torch.tensor([[2.0, 0.0]]), torch.tensor([1.0, 0.5, 0.0])
    _, plain = diffier_sample(velocity, noise, grid, iterations=0)
    huge, info = diffier_sample(velocity, noise, grid, iterations=2, step_size=1e3)  # 6 halvings do not help
    assert info["accumulated_error"] <= plain["accumulated_error"]
    torch.testing.assert_close(huge, torch.tensor([[0.5, 0.0]]))      # the point is kept: plain Euler
