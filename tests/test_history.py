"""lab.history: rows, metric arrays, JSON round-trip, combining runs."""
import math

import numpy as np
import pytest
import torch

from lab.history import History, Runs, combine


def _history():
    h = History(meta={"algorithm": "adam", "seed": 3, "config": {"lr": 0.1}})
    h.append(0, loss=1.0, xy=[0.0, 1.0])
    h.append(1, loss=torch.tensor(0.5), xy=np.array([0.5, 0.5]), accuracy=0.25)
    h.append(2, loss=float("nan"), xy=torch.tensor([1.0, 0.0]), flag=True)
    h.artifacts["table"] = {"a": [1, 2]}
    return h


def test_metrics_read_as_arrays_over_the_rows_that_have_them():
    h = _history()
    assert len(h) == 3 and h.steps.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(h["loss"][:2], [1.0, 0.5])
    assert math.isnan(h["loss"][2])
    assert h["xy"].shape == (3, 2)
    steps, acc = h.series("accuracy")
    assert steps.tolist() == [1] and acc.tolist() == [0.25]
    assert h["flag"].tolist() == [1.0]
    assert h.keys == ["loss", "xy", "accuracy", "flag"]
    assert h.last("loss") != h.last("loss")  # NaN
    assert "accuracy" in h and "nope" not in h


def test_unknown_metric_lists_the_metrics():
    with pytest.raises(KeyError, match="metrics: loss, xy"):
        _history()["lss"]


def test_step_must_be_int():
    with pytest.raises(TypeError, match="step"):
        History().append(1.5, loss=1.0)


def test_json_round_trip_keeps_everything(tmp_path):
    h = _history()
    again = History.from_json(h.to_json())
    assert again == h
    assert math.isnan(again["loss"][2])
    assert again.meta == {"algorithm": "adam", "seed": 3, "config": {"lr": 0.1}}
    assert again.artifacts == {"table": {"a": [1, 2]}}
    path = tmp_path / "h.json"
    h.to_json(path)
    assert History.from_json(path) == h
    assert History.from_json(str(path)) == h


def test_combine_and_runs_round_trip(tmp_path):
    a, b = _history(), _history()
    b.meta["algorithm"] = "sgd"
    runs = combine([a, b])
    assert list(runs) == ["adam", "sgd"]
    assert set(runs.metric("accuracy")) == {"adam", "sgd"}
    same = combine([a, a])
    assert list(same) == ["adam #0", "adam #1"]
    with pytest.raises(ValueError, match="labels"):
        combine([a], labels=["x", "y"])
    with pytest.raises(TypeError, match="History"):
        Runs({"x": 3})
    path = tmp_path / "runs.json"
    runs.to_json(path)
    back = Runs.from_json(path)
    assert list(back) == ["adam", "sgd"] and back["sgd"] == b
