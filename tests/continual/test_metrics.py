"""Continual-evaluation metrics (min-ACC, WC-ACC, windowed forgetting) and the stability gap."""
import math

import numpy as np
import pytest

from lab.continual.metrics import continual_metrics, current_task, min_acc, windowed_forgetting
from lab.experiments import run
from lab.registry import get

# Prepare: 2 tasks, task 1 ends at iteration 1; task 1 dips to 0.4 at n=2 and recovers to 0.8
ACC = np.array([[0.5, 0.0],
                [0.9, 0.1],
                [0.4, 0.3],
                [0.6, 0.6],
                [0.8, 0.7]])
ENDS = [1, 4]


def test_hand_computed_metrics():
    m = continual_metrics(ACC, ENDS, window=2)
    assert m["min_acc"] == pytest.approx(0.4)               # min over n in (1, 4] of task 1
    assert m["wc_acc"] == pytest.approx(0.7 / 2 + 0.5 * 0.4)  # (1/k) A[t,k] + (1 - 1/k) min-ACC
    assert m["acc"] == pytest.approx((0.8 + 0.7) / 2)
    assert m["forgetting"] == pytest.approx(0.9 - 0.8)
    assert m["wf"] == pytest.approx(0.9 - 0.4)               # largest drop within 2 iterations
    assert get("continual", "stability_gap") is continual_metrics


def test_window_limits_the_drop_and_time_argument():
    acc = np.array([[1.0, 0.0], [0.9, 0.0], [0.8, 0.0], [0.7, 0.0]])
    assert windowed_forgetting(acc, [0, 3], window=1) == pytest.approx(0.1)
    assert windowed_forgetting(acc, [0, 3], window=3) == pytest.approx(0.3)
    assert min_acc(ACC, ENDS, t=2) == pytest.approx(0.4)
    assert current_task(ENDS, 1) == 1 and current_task(ENDS, 2) == 2


def test_invariants_wc_acc_is_a_lower_bound_and_recovery_never_raises_min_acc():
    rng = np.random.default_rng(0)
    acc = rng.uniform(size=(30, 3))
    ends = [9, 19, 29]
    for t in range(10, 30):
        m = continual_metrics(acc, ends, t=t)
        assert m["min_acc"] <= acc[ends[0] + 1:t + 1, 0].mean() + 1e-12
        # min over (e_i, t] <= the value at t, so WC-ACC never exceeds the plain ACC
        assert m["wc_acc"] <= m["acc"] + 1e-12
    assert min_acc(acc, ends, t=25) <= min_acc(acc, ends, t=15)


def test_single_task_edge_case():
    acc = np.array([[0.2], [0.5]])
    m = continual_metrics(acc, [1])
    assert math.isnan(m["min_acc"]) and math.isnan(m["wf"]) and m["wc_acc"] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(acc=np.zeros(3), task_ends=[0]), "acc"),
    (dict(acc=np.zeros((3, 2)), task_ends=[1]), "task_ends"),
    (dict(acc=np.zeros((3, 2)), task_ends=[2, 1]), "task_ends"),
    (dict(acc=np.full((3, 2), np.nan), task_ends=[0, 2]), "acc"),
    (dict(acc=np.zeros((3, 2)), task_ends=[0, 2], t=5), "t must"),
    (dict(acc=np.zeros((3, 2)), task_ends=[0, 2], window=0), "window"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        continual_metrics(**kwargs)


@pytest.mark.slow
def test_stability_gap_on_digits():
    """Task-1 accuracy dips right after the switch, then recovers; min-ACC < final ACC (3 seeds)."""
    for seed in range(3):
        h = run("stability_gap_digits", seed=seed, steps_per_task=100)
        a1 = h["acc_task1"]
        end = h.artifacts["task_ends"][0]
        dip = a1[end + 1:end + 51].min()
        assert a1[end] > 0.85
        assert dip < a1[end] - 0.1                      # the gap, invisible at task ends
        assert a1[-1] > dip + 0.05                      # recovery
        assert h.artifacts["metrics"]["min_acc"] < a1[-1] - 0.05
        assert h.artifacts["end_of_task_acc"][1][0] == pytest.approx(a1[-1])


def test_stability_gap_experiment_rejects_bad_config():
    with pytest.raises(ValueError, match="lr"):
        run("stability_gap_digits", lr=-1.0)
    with pytest.raises(TypeError, match="replay"):
        run("stability_gap_digits", replay=1.5)


def test_rising_accuracy_gives_no_windowed_forgetting_and_one_task_has_no_forgetting():
    acc = np.array([[0.5, 0.0], [0.6, 0.0], [0.7, 0.1], [0.9, 0.2]])
    assert windowed_forgetting(acc, [0, 3], window=3) == 0.0    # negative drops count as 0
    assert math.isnan(continual_metrics(np.array([[0.2], [0.5]]), [1])["forgetting"])
