"""Figures for the optimizer lessons (``go.Figure`` out).

- :func:`effective_step_figure`: per-coordinate effective step ``|x_{t+1} - x_t| / |g_t|`` of
  surface runs: how far a coordinate moved per unit of gradient. Plain SGD is a flat line at lr;
  adaptive methods (Adam, AdaBelief, AGD) and sign methods (Lion, signSGD) reshape it.
- :func:`time_to_target_table`: AlgoPerf-style table of the steps (and gradient evaluations, and,
  as a noisy secondary column, seconds) each run needed to reach a target, e.g. test accuracy 0.9,
  ranked by steps (by evaluations where the methods differ in cost per step).
- :func:`surface_figures` and :func:`digits_figures`: the figure sets of notebooks 01 and 03.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from lab.history import History, Runs
from lab.viz.figures import color, curves, make_subplots, pending, trajectory_figure, _themed


def _as_runs(runs: History | Mapping[str, History]) -> Runs:
    if isinstance(runs, History):
        return Runs({str(runs.meta.get("algorithm", "run")): runs})
    return runs if isinstance(runs, Runs) else Runs(runs)


def effective_step_figure(runs: History | Mapping[str, History], *, title: str | None = None
                          ) -> go.Figure:
    """One subplot per coordinate: ``|dx_i| / |g_i|`` against step for each run (log scale).

    Reads ``artifacts['effective_step']`` (a list of per-step lists), as written by the
    ``optimizer_on_surface`` experiment.
    """
    runs = _as_runs(runs)
    series = {label: np.asarray(h.artifacts.get("effective_step", []), dtype=float)
              for label, h in runs.items()}
    dims = max((s.shape[1] for s in series.values() if s.ndim == 2 and len(s)), default=0)
    if dims == 0:                                        # a run in progress writes it at its end
        return pending(title or "effective step size per coordinate", "the per-coordinate step")
    names = "xyzw"
    fig = make_subplots(rows=dims, cols=1, shared_xaxes=True, vertical_spacing=0.05)
    for i, (label, s) in enumerate(series.items()):
        if s.ndim != 2 or not len(s):
            continue
        for d in range(min(dims, s.shape[1])):
            values = np.where(s[:, d] > 0, s[:, d], np.nan)  # zero moves cannot sit on a log axis
            fig.add_trace(go.Scatter(x=np.arange(len(s)), y=values, mode="lines", name=label,
                                     legendgroup=label, showlegend=d == 0,
                                     line=dict(color=color(i))), row=d + 1, col=1)
    for d in range(dims):
        fig.update_yaxes(type="log", title_text=f"|dx| / |g| of {names[d] if d < 4 else d}", row=d + 1, col=1)
    fig.update_xaxes(title_text="step", row=dims, col=1)
    fig.update_layout(title=title or "effective step size per coordinate",
                      height=220 * dims + 90, margin=dict(l=60, r=20, t=60, b=40))
    return fig


def time_to_target_table(runs: History | Mapping[str, History], metric: str = "test_accuracy",
                         target: float = 0.9, *, higher_is_better: bool = True,
                         rank_by: str = "auto") -> go.Figure:
    """A table ranked by steps to ``metric`` = ``target`` (by gradient evaluations when the methods
    differ in cost per step, :func:`lab.history.target_rows`), with evaluations, seconds (a
    secondary column, labelled noisy: it moves with the machine's load), final and best values."""
    from lab.history import target_rows

    rows = target_rows(_as_runs(runs), metric, target, higher_is_better=higher_is_better,
                       rank_by=rank_by)

    def fmt(v, spec):
        return "not reached" if v is None else format(v, spec)

    basis = rows[0]["ranked_by"] if rows else "steps"
    cells = [["–" if r["rank"] is None else str(r["rank"]) for r in rows],
             [r["optimizer"] for r in rows], [fmt(r["steps"], ".0f") for r in rows],
             [fmt(r["evals"], ".0f") if r["steps"] is not None else "not reached" for r in rows],
             [fmt(r["seconds"], ".3f") for r in rows], [f"{r['final']:.3f}" for r in rows],
             [f"{r['best']:.3f}" for r in rows]]
    header = ["rank", "optimizer", "<b>steps</b> to target" if basis == "steps" else "steps to target",
              "<b>gradient evals</b> to target" if basis == "evals" else "gradient evals to target",
              "seconds to target (noisy: machine load)", f"final {metric}", f"best {metric}"]
    fig = go.Figure(go.Table(columnwidth=[0.5, 2.6, 1, 1.2, 1.5, 1, 1],
                             header=dict(values=header, align="left", fill_color="#eeeeee"),
                             cells=dict(values=cells, align="left")))
    sign = ">=" if higher_is_better else "<="
    _themed(fig).update_layout(title=f"time to target ({metric} {sign} {target:g}), ranked by {basis}",
                      height=90 + 28 * (len(rows) + 1),
                      margin=dict(l=20, r=20, t=50, b=10))
    return fig


def surface_figures(runs: Runs) -> list[go.Figure]:
    """Notebook 01: trajectories over contours, loss curves, per-coordinate effective steps."""
    from toy_envs.surfaces import get_surface

    surface = get_surface(next(iter(runs.values())).meta["surface"])
    return [trajectory_figure(runs), curves(runs, "loss", log_y=surface.minimum >= 0),
            effective_step_figure(runs)]


def digits_figures(runs: Runs, target: float | None = None) -> list[go.Figure]:
    """Notebook 03: the time-to-target table, loss and test accuracy against step, and accuracy
    against gradient evaluations (the cost axis; it differs from steps for SAM/WSAM and ES).

    ``target`` defaults to the runs' ``meta['target']`` (set by ``compare_on_digits``), else 0.9.
    """
    if target is None:
        target = float(next(iter(runs.values())).meta.get("target", 0.9))
    return [time_to_target_table(runs, "test_accuracy", target),
            curves(runs, ["loss", "test_accuracy"], log_y=[True, False]),
            curves(runs, "test_accuracy", x="evals",
                   title="test accuracy against gradient (or fitness) evaluations")]


def algoperf_figures(history: History) -> list[go.Figure]:
    """The ``algoperf`` experiment: its time-to-target table (ranked by steps, seconds beside them
    as a noisy column) and the test-accuracy curves against step."""
    runs = Runs({label: History.from_dict(d) for label, d in history.artifacts["runs"].items()})
    return [time_to_target_table(runs, "test_accuracy", history.meta["target"]),
            curves(runs, "test_accuracy", title="test accuracy against step")]


__all__ = ["effective_step_figure", "time_to_target_table", "surface_figures", "digits_figures",
           "algoperf_figures"]
