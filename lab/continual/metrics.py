"""Continual evaluation metrics (min-ACC, WC-ACC, windowed forgetting): measure the stability gap.

Paper: "Continual evaluation for lifelong learning: Identifying the stability gap", De Lange et al.,
arXiv 2205.13452.

The metric: ``A[n, i]`` = accuracy on task ``i``'s evaluation set after iteration ``n``
(``n = 0..t``, evaluation every iteration); ``e_i = |T_i|`` = the last iteration of task ``i``;
the current time is ``t`` and the current task is ``k`` (1-based: tasks ``1..k-1`` have ended,
``e_i < t``); ``w`` is the window of the windowed forgetting; ``(·)^+ = max(·, 0)``.

- min-ACC (average over previous tasks of the worst accuracy seen since that task ended)::

      min-ACC_t = 1/(k-1) * sum_{i<k} min_{e_i < n <= t} A[n, i]

- WC-ACC (worst-case accuracy, a lower bound on the accuracy the model had at any time)::

      WC-ACC_t = (1/k) * A[t, k] + (1 - 1/k) * min-ACC_t

- windowed forgetting: per previous task the largest drop within ``w`` iterations, averaged over
  previous tasks::

      WF^w_t = 1/(k-1) * sum_{i<k} max_{e_i <= n < n' <= min(n + w, t)} (A[n, i] - A[n', i])^+

- for contrast, the standard end-of-task metrics: ``ACC_t = mean_{i<=k} A[t, i]`` and
  ``forgetting_t = 1/(k-1) sum_{i<k} (A[e_i, i] - A[t, i])``.

Intuition: evaluating only at the *end* of each task sees the recovered accuracy; evaluating after
every iteration shows that right after the switch to a new task the accuracy on earlier tasks
collapses and then (with replay) mostly recovers -- the *stability gap* -- and min-ACC and WF
measure its depth.

Where it departs from end-of-task evaluation (ACC and forgetting above): it needs the whole
per-iteration accuracy matrix instead of one row per task, and takes minima (and windowed maxima
of drops) over time instead of the values at the task ends.

Choices (the spec's notation is [unverified]):
- The window of WF starts at the end of the task (``n >= e_i``), so the drop from the
  end-of-task accuracy counts; negative drops count as 0.
- A task has ended once ``e_i < t``; the current task is the first that has not.
- With a single task (``k = 1``) min-ACC, WF and forgetting are NaN and WC-ACC equals the current
  accuracy.
- ``t`` defaults to the last row; ``acc`` must be finite and ``task_ends`` increasing, one per task.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lab.registry import register


def _check_inputs(acc, task_ends: Sequence[int], t: int | None) -> tuple[np.ndarray, list[int], int]:
    a = np.asarray(acc, dtype=float)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"acc must be a 2-D array (iterations, tasks), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("acc contains NaN or Inf")
    ends = [int(e) for e in task_ends]
    if len(ends) != a.shape[1]:
        raise ValueError(f"task_ends must give one end iteration per task ({a.shape[1]}), got {len(ends)}")
    if any(b <= e for e, b in zip(ends, ends[1:])) or (ends and ends[0] < 0):
        raise ValueError(f"task_ends must be increasing and >= 0, got {ends}")
    t = a.shape[0] - 1 if t is None else int(t)
    if not 0 <= t < a.shape[0]:
        raise ValueError(f"t must lie in [0, {a.shape[0] - 1}], got {t}")
    return a, ends, t


def current_task(task_ends: Sequence[int], t: int) -> int:
    """The 1-based index ``k`` of the task being trained at iteration ``t`` (tasks with e_i < t ended)."""
    ended = sum(1 for e in task_ends if e < t)
    return min(ended + 1, len(task_ends))


def min_acc(acc, task_ends: Sequence[int], t: int | None = None) -> float:
    """min-ACC at iteration ``t`` (default: the last row); NaN while no task has ended."""
    a, ends, t = _check_inputs(acc, task_ends, t)
    k = current_task(ends, t)
    worst = [a[ends[i] + 1:t + 1, i].min() for i in range(k - 1) if ends[i] < t]
    return float(np.mean(worst)) if worst else float("nan")


def wc_acc(acc, task_ends: Sequence[int], t: int | None = None) -> float:
    """WC-ACC at iteration ``t``: ``(1/k) A[t, k] + (1 - 1/k) min-ACC``."""
    a, ends, t = _check_inputs(acc, task_ends, t)
    k = current_task(ends, t)
    if k == 1:
        return float(a[t, 0])
    return float(a[t, k - 1] / k + (1 - 1 / k) * min_acc(a, ends, t))


def windowed_forgetting(acc, task_ends: Sequence[int], window: int = 100, t: int | None = None) -> float:
    """WF^w at iteration ``t``: mean over ended tasks of the largest drop within ``window`` iterations."""
    a, ends, t = _check_inputs(acc, task_ends, t)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    k = current_task(ends, t)
    drops = []
    for i in range(k - 1):
        seg = a[ends[i]:t + 1, i]                       # accuracies from the task's end to t
        best = 0.0
        for lag in range(1, min(window, len(seg) - 1) + 1):
            best = max(best, float((seg[:-lag] - seg[lag:]).max()))
        drops.append(best)
    return float(np.mean(drops)) if drops else float("nan")


@register("continual", "stability_gap",
          paper="Continual evaluation for lifelong learning: Identifying the stability gap",
          arxiv="2205.13452")
def continual_metrics(acc, task_ends: Sequence[int], *, window: int = 100,
                      t: int | None = None) -> dict[str, float]:
    """Per-iteration continual-evaluation metrics of an accuracy matrix ``acc (iterations, tasks)``.

    Returns ``acc`` (mean accuracy over seen tasks at ``t``), ``min_acc``, ``wc_acc``,
    ``wf`` (windowed forgetting, window ``window``) and ``forgetting`` (end-of-task accuracy minus
    accuracy at ``t``, averaged over ended tasks).
    """
    a, ends, t = _check_inputs(acc, task_ends, t)
    k = current_task(ends, t)
    ended = range(k - 1)                                  # tasks 1..k-1 (0-based 0..k-2)
    return {
        "acc": float(a[t, :k].mean()),
        "min_acc": min_acc(a, ends, t),
        "wc_acc": wc_acc(a, ends, t),
        "wf": windowed_forgetting(a, ends, window, t),
        "forgetting": (float(np.mean([a[ends[i], i] - a[t, i] for i in ended])) if k > 1
                       else float("nan")),
    }


__all__ = ["continual_metrics", "min_acc", "wc_acc", "windowed_forgetting", "current_task"]
