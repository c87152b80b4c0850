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


def test_classification_problem_learns():
    # logistic regression from x = 0 (chance): SCAFFOLD's model classifies the held-out test split
    h = run("federated", problem="logistic_regression", algorithm="scaffold", rounds=15, lr=0.1)
    assert h["accuracy"][0] == pytest.approx(0.5, abs=0.1)
    assert h["accuracy"][-1] > h["accuracy"][0] + 0.2
    assert h["loss"][-1] < h["loss"][0]


def test_batch_size_reaches_the_algorithm():
    from lab.experiments.federated import FederatedConfig, algorithm_spec, components

    cfg = FederatedConfig(algorithm="fedstale(beta=0.3)", batch_size=4)
    assert algorithm_spec(cfg) == "fedstale(beta=0.3, batch_size=4)"
    assert components(cfg)[1].batch_size == 4
    # a spec that sets batch_size wins over the config
    assert components(FederatedConfig(algorithm="fedavg(batch_size=2)", batch_size=4))[1].batch_size == 2
    full, mini = run("federated", rounds=3), run("federated", rounds=3, batch_size=4)
    assert full["loss"][-1] != mini["loss"][-1]


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
