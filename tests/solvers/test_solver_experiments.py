"""The solver experiments and their figures."""
import numpy as np
import pytest

from lab.experiments import run
from lab.viz.solvers import graph_figure, ips_figure


def test_ips_convergence_monotone_and_plots():
    h = run("ips_convergence")
    assert np.all(np.diff(h["loss"]) <= 1e-9)
    assert h.artifacts["converged"]
    np.testing.assert_allclose(np.sum(h.artifacts["fitted"], 0), np.sum(h.artifacts["observed"], 0), rtol=1e-6)
    assert len(ips_figure(h).data) >= 3


def test_independence_converges_in_one_sweep():
    h = run("ips_convergence", model="independence")
    assert len(h) == 2  # start + one sweep (decomposable model)


def test_graph_and_dag_learning_recover_the_truth():
    graph = run("graph_learning")
    assert graph.artifacts["errors"] == 0
    assert run("graph_learning", transform="none").artifacts["errors"] > 0
    dag = run("dag_learning")
    assert dag.artifacts["errors"] == 0 and dag.artifacts["h"] == pytest.approx(0.0, abs=1e-12)
    assert len(graph_figure(dag).data) == 3


def test_bad_config():
    with pytest.raises(ValueError, match="coupling"):
        run("graph_learning", coupling=0.7)
    with pytest.raises(ValueError, match="rows"):
        run("ips_convergence", rows=1)
