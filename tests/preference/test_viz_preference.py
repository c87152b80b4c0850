"""Figures of the preference lessons: what each one draws."""
import numpy as np
import pytest
import torch

from lab.experiments import run
from lab.preference.core import alpha_reward
from lab.viz.preference import lesson_figures, logprob_figure, ranking_figure, reward_shape_figure, training_figure


@pytest.fixture(scope="module")
def history():
    return run("preference_training", loss="alphapo", steps=4, n_samples=4)


def test_reward_shape_draws_the_alpha_family_and_its_gradient_weight():
    fig = reward_shape_figure(alpha=0.5, beta=2.0, gamma=0.3, alphas=(0.0, 1.0))
    assert len(fig.data) == 6                                   # 3 shapes × (reward, weight)
    reward = fig.data[0]
    x = torch.tensor(reward.x, dtype=torch.float64)
    assert np.allclose(reward.y, 2.0 * alpha_reward(x, 0.5).numpy())
    assert np.allclose(fig.data[1].y, np.exp(-0.5 * np.asarray(fig.data[1].x)))
    assert "γ = 0.3" in fig.layout.title.text


def test_run_figures_show_the_logged_curves(history):
    figs = lesson_figures(history)
    assert len(figs) == 3
    # the shape panel follows the run's hyperparameters (AlphaPO defaults α = 0.25, β = 2.5)
    assert figs[0].data[0].name.startswith("α = 0.25")
    lp = logprob_figure(history)
    assert np.allclose(lp.data[0].y, history["chosen_logps"]) and np.allclose(lp.data[1].y, history["rejected_logps"])
    assert np.allclose(lp.data[2].y, history["margin"])
    rk = ranking_figure(history)
    assert [t.name.split(": ")[1] for t in rk.data] == ["ranking accuracy", "idealized", "reference",
                                                         "pairs the reference misranks"]
    assert len(training_figure(history).data) == 6
