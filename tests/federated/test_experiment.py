"""The ``federated`` experiment, ``compare`` and the figures."""
import plotly.graph_objects as go
import pytest

from lab.experiments import run
from lab.experiments.federated import CompareConfig, compare
from lab.viz.federated import convergence_figure, dashboard, participation_raster, weights_figure


def test_default_experiment_and_dashboard():
    h = run("federated", rounds=10)
    assert h["loss"].shape == (11,) and h.meta["algorithm"] == "fedau"
    figs = dashboard(h)
    assert len(figs) == 4 and all(isinstance(f, go.Figure) for f in figs)


def test_compare_shares_the_draw_and_faults_show_in_the_raster():
    runs = compare(CompareConfig(algorithms=("fedavg", "fedau"), rounds=8, staleness=1.0, drop_prob=0.2))
    a, b = runs["fedavg"], runs["fedau"]
    assert (a["participation"] == b["participation"]).all()  # same participants, different weights
    raster = participation_raster(a)
    assert any(t.name == "refused upload" for t in raster.data)
    assert len(weights_figure(runs).data) >= 3 and len(convergence_figure(runs).data) == 4


def test_classification_problem_runs():
    h = run("federated", problem="logistic_regression", algorithm="scaffold", rounds=5)
    assert 0.0 <= h["accuracy"][-1] <= 1.0


def test_bad_config():
    with pytest.raises(ValueError, match="alpha"):
        run("federated", alpha=0.0)
    with pytest.raises(ValueError, match="algorithms"):
        compare(CompareConfig(algorithms=()))


def test_stragglers_follow_the_data_when_slow_data():
    from lab.experiments.federated import FederatedConfig, build_problem, slowness_of

    cfg = FederatedConfig(staleness=1.5)
    problem = build_problem(cfg.problem, cfg.num_clients, cfg.alpha, cfg.seed)
    slow = slowness_of(cfg, problem)
    assert set(slow.tolist()) == {0.0, 3.0}
    assert set(slowness_of(FederatedConfig(staleness=1.5, slow_data=False), problem).tolist()) == {1.5}
