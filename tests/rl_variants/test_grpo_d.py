"""GRPO-D: the dynamic KL schedule and the GRPO loss it drives."""
import math

import numpy as np
import pytest
import torch

from lab.registry import get
from lab.rl.grpo_d import grpo_d, kl_schedule


def test_schedule_matches_the_spec_example():
    # Prepare: t = 100, w = 30, beta in [0, 0.02] (the paper's geometry setting)
    steps = (0, 15, 30, 65, 100)
    # Execute
    betas = [kl_schedule(s, 100, beta_min=0.0, beta_max=0.02, warm_frac=0.3) for s in steps]
    # Assert: beta_mid at 0, halfway down at 15, beta_min at w, halfway up at 65, beta_max at t
    assert betas == pytest.approx([0.01, 0.005, 0.0, 0.01, 0.02], abs=1e-12)


def test_schedule_falls_then_rises_and_is_clamped_after_the_run():
    betas = [kl_schedule(s, 50, beta_min=0.04, beta_max=0.1) for s in range(61)]
    w = 15  # 0.3 * 50
    assert all(b1 < b0 for b0, b1 in zip(betas[:w], betas[1:w + 1]))
    assert all(b1 > b0 for b0, b1 in zip(betas[w:50], betas[w + 1:51]))
    assert betas[0] == pytest.approx(0.07) and betas[w] == pytest.approx(0.04)
    assert betas[50:] == pytest.approx([0.1] * 11)


def test_loss_is_grpo_with_the_scheduled_beta():
    # Prepare: on-policy (ratio 1), two responses of lengths 2 and 1, A = (+1, -1)
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0], [-0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    # Execute at s = 0 of t = 10 (beta = beta_mid = 0.01)
    loss, metrics = grpo_d(logprobs, None, adv, mask, step=0, total_steps=10, ref_logprobs=ref)
    # Assert: seq-mean-token-mean of (-rho A + beta k3); k3(0.5) = e^-0.5 - 1 + 0.5 on one token
    k3 = math.exp(-0.5) - 0.5
    expected = 0.5 * ((-1.0 + 0.01 * k3 - 1.0) / 2 + 1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["grpo_d/beta"] == pytest.approx(0.01)
    loss.backward()
    # d/d l_{0,0}: -A/(2*2) + beta (1 - e^{-0.5})/(2*2)
    assert logprobs.grad[0, 0].item() == pytest.approx((-1 + 0.01 * (1 - math.exp(-0.5))) / 4, rel=1e-5)


def test_kl_term_vanishes_at_the_bottom_of_the_schedule():
    logprobs = torch.randn(3, 4, requires_grad=True)
    ref = torch.randn(3, 4)
    mask = torch.ones(3, 4)
    adv = torch.tensor([0.5, -0.5, 0.0])
    at_w, _ = grpo_d(logprobs, None, adv, mask, step=3, total_steps=10, ref_logprobs=ref)
    no_kl, _ = get("policy_loss", "grpo_d")(logprobs, None, adv, mask, step=3, total_steps=10,
                                            ref_logprobs=None, beta_max=0.0)
    assert at_w.item() == pytest.approx(no_kl.item(), abs=1e-7)


@pytest.mark.parametrize("kwargs, name", [
    (dict(warm_frac=0.0), "warm_frac"), (dict(warm_frac=1.0), "warm_frac"),
    (dict(beta_min=0.1, beta_max=0.01), "beta_max"), (dict(beta_min=-0.1), "beta_min"),
])
def test_bad_schedule_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        kl_schedule(1, 10, **kwargs)


def test_bad_step_and_missing_reference():
    with pytest.raises(ValueError, match="step"):
        kl_schedule(-1, 10)
    with pytest.raises(ValueError, match="total_steps"):
        kl_schedule(0, 0)
    with pytest.raises(TypeError, match="step"):
        kl_schedule(1.5, 10)
    lp = torch.zeros(2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_d(lp, None, torch.ones(2), torch.ones(2, 2), step=0, total_steps=10)


# ---- in the training loop -------------------------------------------------------------------
def test_the_loop_hands_grpo_d_the_step_so_beta_follows_the_schedule():
    # the batch the loop builds carries step and total_steps; call_with passes them by name
    from lab.rl.core import call_with, make_fn

    loss_fn = make_fn("policy_loss", "grpo_d(beta_min=0.0, beta_max=0.02)")
    logprobs = torch.randn(4, 3, requires_grad=True)
    batch = {"logprobs": logprobs, "old_logprobs": logprobs.detach(), "advantages": torch.zeros(4),
             "mask": torch.ones(4, 3), "ref_logprobs": torch.zeros(4, 3), "total_steps": 100}
    betas = [call_with(loss_fn, {**batch, "step": s})[1]["grpo_d/beta"] for s in (0, 15, 30, 65, 100)]
    assert betas == pytest.approx([0.01, 0.005, 0.0, 0.01, 0.02])


def test_grpo_d_runs_in_policy_optimization_by_name():
    from lab.experiments import run

    h = run("policy_optimization", loss="grpo_d(beta_min=0.0, beta_max=0.02)", steps=3)
    assert len(h["kl"]) == 3 and np.isfinite(h["loss"]).all()


def test_segment_panel_grpo_d_view_plots_the_schedule():
    from lab.viz.lessons import segment_panel
    from lab.viz.segments import kl_schedule_figure

    fig = kl_schedule_figure(100, 0.0, 0.02)
    assert min(fig.data[0].y) == 0.0 and fig.data[0].y[30] == 0.0 and fig.data[0].y[-1] == 0.02
    p = segment_panel("grpo_d", run=False)
    p.controls["steps"].value = 10
    assert p.last_error is None and len(p.figures) == 2


def test_schedule_never_leaves_its_range_by_rounding():
    for t in (7, 10, 33, 101):
        betas = [kl_schedule(s, t, beta_min=0.0, beta_max=0.2) for s in range(t + 1)]
        assert min(betas) >= 0.0 and 0.2 >= max(betas) == pytest.approx(0.2)
