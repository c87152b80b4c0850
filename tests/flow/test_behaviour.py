"""Behaviour on the 2-D toy: each method shows the effect its paper claims (spec C)."""
import pytest
import torch

from lab.experiments import run
from lab.experiments.flow import ode_samples, pretrained_velocity
from lab.flow.core import rollout, sigmas
from lab.flow.diffier import diffier_sample
from toy_envs.flow2d import energy_distance, mode_centers, mode_fractions, sample_target


@pytest.fixture(scope="module")
def pretrained():
    return pretrained_velocity()


def test_cfm_learns_the_eight_gaussians(pretrained):
    samples = ode_samples(pretrained, 1000, 20, torch.Generator().manual_seed(3))
    data = sample_target("gaussians8", 1000, torch.Generator().manual_seed(4))[0]
    fractions = mode_fractions(samples, mode_centers())
    assert fractions.min() > 0.06 and fractions.max() < 0.2          # every mode, about 1/8 each
    assert energy_distance(samples[:400], data[:400]) < 0.3
    assert samples.norm(dim=-1).mean() == pytest.approx(4.0, abs=0.4)


@pytest.mark.slow
def test_wcfm_paths_are_straighter_than_cfm():
    straight = {m: run("flow_pretrain", method=m, steps=250, eval_every=250).artifacts["straightness"]
                for m in ("cfm", "wcfm")}
    assert straight["wcfm"] < straight["cfm"]


def test_difficulty_curriculum_walks_through_every_stage():
    h = run("flow_pretrain", method="difficulty_curriculum", steps=150, eval_every=150, n_clusters=3, patience=5)
    stages = h["stage"]
    assert stages[0] == 1 and stages[-1] == 3 and (stages[1:] >= stages[:-1]).all()
    assert h["energy"][-1] < 0.6


@pytest.mark.parametrize("method", ["ddpo", "flow_grpo", "awm", "ac_flow", "alignprop", "b2_diffurl"])
def test_fine_tuning_raises_the_mean_reward(method):
    h = run("flow_finetune", method=method, steps=25, eval_every=25)
    assert h["target_frac"][-1] > 2 * h["target_frac"][0]
    assert h["ode_reward"][-1] > 2 * h["ode_reward"][0]
    assert h["divergence"][-1] > h["divergence"][0]


def test_flow_grpo_kl_keeps_modes_alive():
    free = run("flow_finetune", method="flow_grpo", steps=40, eval_every=40, beta=0.0)
    tied = run("flow_finetune", method="flow_grpo", steps=40, eval_every=40, beta=0.5)
    assert tied["divergence"][-1] < free["divergence"][-1]
    assert tied["modes"][-1] > free["modes"][-1]


def test_alignprop_over_optimises_an_unbounded_reward():
    h = run("flow_finetune", method="alignprop", reward="linear", steps=25, eval_every=25)
    after = torch.tensor(h.artifacts["after"])
    assert after[:, 0].mean() > 8.0            # far beyond the rightmost mode at x1 = 4


def test_apg_bounds_the_overshoot_of_high_guidance_where_cfg_flies_off():
    cfg = run("flow_guidance", guidance="cfg", guidance_scale=30.0).artifacts
    apg = run("flow_guidance", guidance="apg", guidance_scale=30.0, norm_threshold=1.0, momentum=0.0).artifacts
    assert cfg["norm_mean"] > 2 * cfg["mode_norm"]               # CFG: samples pushed far past the mode
    assert apg["norm_mean"] < 0.3 * cfg["norm_mean"]
    cfg = run("flow_guidance", guidance="cfg", guidance_scale=12.0).artifacts
    apg = run("flow_guidance", guidance="apg", guidance_scale=12.0, norm_threshold=1.0, momentum=0.0).artifacts
    assert cfg["on_mode"] > 0.9 and apg["on_mode"] > 0.9        # both sharpen onto the mode ...
    assert apg["accumulated_error"] < 0.1 * cfg["accumulated_error"]  # ... APG without overshooting x̂_0
    low = run("flow_guidance", guidance="cfg", guidance_scale=1.0).artifacts
    assert low["on_mode"] > 0.85                  # w = 1 is the conditional model itself


def test_diffier_without_iterations_is_euler_and_its_correction_reduces_the_error(pretrained):
    cond = torch.zeros(200, dtype=torch.long)
    velocity = lambda x, t: pretrained(x, t, cond)  # noqa: E731
    noise, grid = torch.randn(200, 2, generator=torch.Generator().manual_seed(5)), sigmas(10)
    plain, info0 = diffier_sample(velocity, noise, grid, iterations=0)
    with torch.no_grad():
        torch.testing.assert_close(plain, rollout(velocity, noise, grid).samples)
    _, info3 = diffier_sample(velocity, noise, grid, iterations=3, step_size=0.5)
    assert info3["accumulated_error"] < info0["accumulated_error"]


def test_experiment_configs_reject_bad_values():
    with pytest.raises(ValueError, match="lr"):
        run("flow_finetune", lr=-1.0, steps=1)
    with pytest.raises(ValueError, match="batch"):
        run("flow_finetune", batch=60, group_size=8, steps=1)
    with pytest.raises(ValueError, match="target_mode"):
        run("flow_finetune", target_mode=9, steps=1)
    with pytest.raises(ValueError, match="steps"):
        run("flow_pretrain", steps=0)


def test_dancegrpo_shared_noise_runs_and_figures_build():
    from lab.experiments.flow import flow_finetune, flow_guidance

    h = run("flow_finetune", method="flow_grpo", schedule="dance", noise_level=0.5, shared_noise=True,
            steps=3, eval_every=3)
    assert len(h["reward"]) == 3 and all(k in h for k in ("kl", "clip_frac", "divergence"))
    figs = flow_finetune.plot(h)
    assert len(figs) == 3 and len(figs[0].data) == 3          # before, after, target marker
    figs = flow_guidance.plot(run("flow_guidance", n_samples=16, n_sample_steps=5))
    assert len(figs) == 2 and "mean ‖x‖" in figs[0].layout.title.text
    with pytest.raises(ValueError, match="target_class"):
        run("flow_guidance", target_class=8)


@pytest.mark.slow
def test_b2_diffurl_keeps_more_modes_than_ddpo_under_a_sparse_reward():
    ddpo = run("flow_finetune", method="ddpo", reward="sparse", eval_every=40)
    b2 = run("flow_finetune", method="b2_diffurl", reward="sparse", eval_every=40)
    assert b2["ode_reward"][-1] > 2 * b2["ode_reward"][0]       # it still learns
    assert b2["modes"][-1] > ddpo["modes"][-1]                   # ... with more diversity left


@pytest.mark.slow
def test_ac_flow_ablations_clipping_warmup_and_w2_term():
    full = run("flow_finetune", method="ac_flow", tau=0.1, eval_every=40)
    ablated = run("flow_finetune", method="ac_flow", tau=0.1, adv_clip=None, warmup=0, eval_every=40)
    assert full["ode_reward"][-1] > 2 * ablated["ode_reward"][-1]   # sharp weights on a cold critic stall
    free = run("flow_finetune", method="ac_flow", alpha=0.0, eval_every=40)
    tied = run("flow_finetune", method="ac_flow", alpha=0.1, eval_every=40)
    assert tied["divergence"][-1] < free["divergence"][-1]          # the W2 term holds the model near the reference
