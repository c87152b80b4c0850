"""The optimizer experiments and figures: digits_mlp, comparisons, time to target, algoperf."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lab.experiments import run
from lab.experiments.optimizers import SurfaceCompareConfig, build_optimizer, compare_on_surface
from lab.history import History, Runs, target_rows, time_to_target
from lab.viz.optim import (algoperf_figures, digits_figures, effective_step_figure,
                           time_to_target_table)


def _history(acc, wall):
    h = History(meta={"algorithm": "x"})
    for step, (a, w) in enumerate(zip(acc, wall)):
        h.append(step, test_accuracy=a, wall_time=w, loss=1 - a)
    return h


def test_time_to_target_hand_example():
    # Prepare: accuracy 0.5, 0.8, 0.95, 0.97 at 1, 2, 3, 4 seconds
    h = _history([0.5, 0.8, 0.95, 0.97], [1.0, 2.0, 3.0, 4.0])
    # Execute / Assert: the first crossing, in seconds and in steps; None if never reached
    assert time_to_target(h, "test_accuracy", 0.9) == 3.0
    assert time_to_target(h, "test_accuracy", 0.9, x="step") == 2.0
    assert time_to_target(h, "test_accuracy", 0.99) is None
    assert time_to_target(h, "loss", 0.2, x="step", higher_is_better=False) == 1.0


def test_target_rows_rank_by_time_and_put_misses_last():
    runs = Runs({"slow": _history([0.5, 0.95], [1.0, 5.0]), "never": _history([0.1, 0.2], [0.1, 0.2]),
                 "fast": _history([0.92, 0.93], [0.5, 1.0])})
    rows = target_rows(runs, "test_accuracy", 0.9)
    assert [r["optimizer"] for r in rows] == ["fast", "slow", "never"]
    assert rows[0]["seconds"] == 0.5 and rows[2]["seconds"] is None and rows[2]["best"] == 0.2
    table = time_to_target_table(runs, "test_accuracy", 0.9)
    assert "not reached" in table.data[0].cells.values[1]


def test_digits_mlp_is_reproducible_and_seeded():
    a = run("digits_mlp", optimizer="adam(lr=1e-2)", steps=15)
    b = run("digits_mlp", optimizer="adam(lr=1e-2)", steps=15)
    c = run("digits_mlp", optimizer="adam(lr=1e-2)", steps=15, seed=1)
    np.testing.assert_array_equal(a["loss"], b["loss"])
    assert not np.array_equal(a["loss"], c["loss"])
    assert set(a.keys) >= {"loss", "accuracy", "test_accuracy", "wall_time"}
    assert ((a["accuracy"] >= 0) & (a["accuracy"] <= 1)).all()


def test_digits_mlp_bad_input_names_the_field():
    with pytest.raises(ValueError, match="lr"):
        run("digits_mlp", lr=-1.0)
    with pytest.raises(ValueError, match="steps"):
        run("digits_mlp", steps=0)


def test_build_optimizer_routes_betas_to_momentum_for_sgd_like():
    p = [torch.nn.Parameter(torch.ones(2))]
    assert build_optimizer("sgd", p, lr=0.1, betas=(0.8, 0.9)).param_groups[0]["momentum"] == 0.8
    assert build_optimizer("lion", p, lr=0.1, betas=(0.8, 0.9)).param_groups[0]["betas"] == (0.8, 0.9)
    # the spec's own settings win over the shared ones
    assert build_optimizer("lion(lr=0.5)", p, lr=0.1).param_groups[0]["lr"] == 0.5


def test_effective_step_of_plain_sgd_is_the_learning_rate():
    # |dx_i| / |g_i| = lr for every coordinate and step of gradient descent
    runs = compare_on_surface(SurfaceCompareConfig(optimizers=("sgd", "adam"), surface="quadratic",
                                                   lr=0.01, steps=20))
    fig = effective_step_figure(runs)
    sgd_traces = [t for t in fig.data if t.name == "sgd"]
    assert len(sgd_traces) == 2                                    # one per coordinate
    for trace in sgd_traces:
        np.testing.assert_allclose(np.asarray(trace.y, dtype=float), 0.01, rtol=1e-9)
    assert runs["adam"].meta["config"]["optimizer"] == "adam"


def test_compare_on_surface_passes_betas():
    runs = compare_on_surface(SurfaceCompareConfig(optimizers=("adam", "sgd"), surface="quadratic",
                                                   lr=0.01, steps=5, beta1=0.5, beta2=0.9))
    assert runs["adam"].meta["config"]["optimizer"] == "adam(betas=(0.5, 0.9))"
    assert runs["sgd"].meta["config"]["optimizer"] == "sgd(momentum=0.5)"
    with pytest.raises(ValueError, match="optimizers"):
        compare_on_surface(SurfaceCompareConfig(optimizers=()))


def test_algoperf_ranks_optimizers_by_time_to_target():
    h = run("algoperf", optimizers=("adam(lr=1e-2)", "sgd(lr=1e-4)"), steps=25, target=0.8)
    table = h.artifacts["table"]
    assert [r["optimizer"] for r in table] == ["adam(lr=1e-2)", "sgd(lr=1e-4)"]  # tiny lr misses
    assert table[1]["seconds"] is None and math.isnan(h["seconds_to_target"][1])
    assert h["seconds_to_target"][0] > 0
    figs = algoperf_figures(h)
    assert len(figs) == 2
    runs = Runs({label: History.from_dict(d) for label, d in h.artifacts["runs"].items()})
    assert len(digits_figures(runs)) == 3
