"""``History``: the per-step metrics of one run, and ``Runs``: several histories side by side.

A History is a list of rows ``(step, {metric: value})``. Values are floats or small arrays
(a 2-D point of a trajectory, the load of each expert). Reading a metric gives a numpy array
over the rows that have it::

    h = History(meta={"algorithm": "adam", "seed": 0})
    h.append(0, loss=1.0, xy=[0.5, 0.1])
    h.append(1, loss=0.5, xy=[0.4, 0.1])
    h["loss"]           # array([1. , 0.5])
    h["xy"].shape       # (2, 2)
    h.series("loss")    # (steps, values) of the rows that have "loss"

``meta`` holds the config, algorithm, seed and wall time; ``artifacts`` holds non-per-step
results (a heatmap of a batch's advantages, a final table), JSON-serializable.
Metric names follow one scheme across the lab: ``loss``, ``reward``, ``accuracy``, ``entropy``,
``clip_frac``, ``kl``, ``adv_mean``, ``adv_std``, ``grad_norm``, ``max_violation``, ...

:func:`time_to_target` and :func:`target_rows` read, from Histories alone, when a metric first
reached a target (AlgoPerf's time-to-result), for experiments and figures alike.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Iterable, Iterator, Mapping

import numpy as np


def _to_jsonable(value: Any) -> Any:
    """Convert tensors, arrays, numpy scalars and dataclasses to plain JSON values."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": valid JSON, restored by _from_json
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class History:
    """Per-step metrics of one run, with ``meta`` (config, algorithm, seed, wall time)."""

    def __init__(self, meta: Mapping[str, Any] | None = None):
        self.rows: list[tuple[int, dict[str, Any]]] = []
        self.meta: dict[str, Any] = dict(meta or {})
        self.artifacts: dict[str, Any] = {}

    # ---- writing -------------------------------------------------------------------------
    def append(self, step: int, **metrics: Any) -> None:
        """Add one row. Tensors and numpy values are converted to floats or lists."""
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        row = {}
        for key, value in metrics.items():
            value = _to_jsonable(value)
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, int):
                value = float(value)
            row[key] = value
        self.rows.append((int(step), row))

    # ---- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: str) -> bool:
        return any(key in row for _, row in self.rows)

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return iter(self.rows)

    @property
    def steps(self) -> np.ndarray:
        """Steps of all rows."""
        return np.array([s for s, _ in self.rows], dtype=np.int64)

    @property
    def keys(self) -> list[str]:
        """Metric names, in order of first appearance."""
        seen: dict[str, None] = {}
        for _, row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` over the rows that have ``key``."""
        pairs = [(s, row[key]) for s, row in self.rows if key in row]
        if not pairs:
            raise KeyError(f"no metric {key!r} in this history; metrics: {', '.join(self.keys)}")
        steps = np.array([s for s, _ in pairs], dtype=np.int64)
        return steps, np.array([v for _, v in pairs], dtype=float)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.series(key)[1]

    def last(self, key: str) -> Any:
        """The latest value of ``key``."""
        return self[key][-1]

    # ---- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": _to_jsonable(self.meta),
            "artifacts": _to_jsonable(self.artifacts),
            "rows": [{"step": s, **_to_jsonable(r)} for s, r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "History":
        h = cls(meta=data.get("meta", {}))
        h.artifacts = dict(data.get("artifacts", {}))
        for row in data.get("rows", []):
            row = dict(row)
            step = row.pop("step")
            h.rows.append((int(step), {k: _from_json(v) for k, v in row.items()}))
        return h

    def to_json(self, path: str | pathlib.Path | None = None) -> str:
        """Serialize to a JSON string; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict())
        if path is not None:
            pathlib.Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | pathlib.Path) -> "History":
        """Read a History from a JSON string or a file path."""
        if isinstance(text_or_path, pathlib.Path) or not str(text_or_path).lstrip().startswith("{"):
            text_or_path = pathlib.Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text_or_path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        algo = self.meta.get("algorithm", "")
        return f"History({algo!r}, {len(self.rows)} rows, metrics={self.keys})"


class Runs(dict):
    """Several labelled histories, for side-by-side plots: ``Runs({"adam": h1, "sgd": h2})``."""

    def __init__(self, runs: Mapping[str, History] | Iterable[tuple[str, History]] = ()):
        super().__init__(runs)
        for label, h in self.items():
            if not isinstance(h, History):
                raise TypeError(f"run {label!r} must be a History, got {type(h).__name__}")

    def metric(self, key: str) -> dict[str, np.ndarray]:
        """``{label: values}`` of one metric across the runs that have it."""
        return {label: h[key] for label, h in self.items() if key in h}

    def to_json(self, path: str | pathlib.Path | None = None) -> str:
        text = json.dumps({label: h.to_dict() for label, h in self.items()})
        if path is not None:
            pathlib.Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | pathlib.Path) -> "Runs":
        if isinstance(text_or_path, pathlib.Path) or not str(text_or_path).lstrip().startswith("{"):
            text_or_path = pathlib.Path(text_or_path).read_text()
        return cls({label: History.from_dict(d) for label, d in json.loads(text_or_path).items()})


def combine(histories: Iterable[History], labels: Iterable[str] | None = None) -> Runs:
    """Label several histories (by ``meta['algorithm']`` unless ``labels`` are given)."""
    histories = list(histories)
    if labels is None:
        labels = [str(h.meta.get("algorithm", i)) for i, h in enumerate(histories)]
    labels = list(labels)
    if len(labels) != len(histories):
        raise ValueError(f"labels has {len(labels)} entries for {len(histories)} histories")
    if len(set(labels)) != len(labels):
        labels = [f"{lab} #{i}" for i, lab in enumerate(labels)]
    return Runs(zip(labels, histories))


def time_to_target(history: History, metric: str = "test_accuracy", target: float = 0.9, *,
                   x: str = "wall_time", higher_is_better: bool = True) -> float | None:
    """The first value of ``x`` (``"step"`` or a metric such as ``wall_time``) at which
    ``metric`` reaches ``target``; None if it never does."""
    steps, values = history.series(metric)
    reached = values >= target if higher_is_better else values <= target
    if not reached.any():
        return None
    i = int(reached.argmax())
    if x == "step":
        return float(steps[i])
    return float(history[x][i])


def target_rows(runs: Runs, metric: str = "test_accuracy", target: float = 0.9, *,
                higher_is_better: bool = True) -> list[dict]:
    """Per run: steps and seconds (``wall_time``) to reach ``target``, final and best value.

    Sorted by seconds to target (by steps where there is no wall time); runs that never reach
    the target come last.
    """
    rows = []
    for label, h in runs.items():
        values = h[metric]
        rows.append({
            "optimizer": label,
            "steps": time_to_target(h, metric, target, x="step", higher_is_better=higher_is_better),
            "seconds": (time_to_target(h, metric, target, x="wall_time",
                                       higher_is_better=higher_is_better)
                        if "wall_time" in h else None),
            "final": float(values[-1]),
            "best": float(values.max() if higher_is_better else values.min()),
        })

    def key(row):
        value = row["seconds"] if row["seconds"] is not None else row["steps"]
        return (value is None, value if value is not None else 0.0)

    return sorted(rows, key=key)
