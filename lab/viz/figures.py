"""Plotly figure builders: a History (or Runs) in, a ``go.Figure`` out. No widget needed.

- :func:`curves`: one metric (or several, as stacked subplots) against step for several runs.
- :func:`trajectory_figure`: a surface's contours with the optimizer trajectories of runs.
- :func:`heatmap`: a matrix (per-token advantages, expert load over steps) as a heatmap.
- :func:`history_figure`: every scalar metric of a History, one subplot each (the CLI default).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lab.history import History, Runs

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def _as_runs(runs: History | Mapping[str, History]) -> Runs:
    if isinstance(runs, History):
        return Runs({str(runs.meta.get("algorithm", "run")): runs})
    return runs if isinstance(runs, Runs) else Runs(runs)


def color(i: int) -> str:
    """The i-th color of the lab's palette (one color per run across all subplots)."""
    return PALETTE[i % len(PALETTE)]


def curves(runs: History | Mapping[str, History], metrics: str | Sequence[str], *,
           x: str = "step", log_y: bool | Sequence[bool] = False, title: str | None = None,
           height: int | None = None) -> go.Figure:
    """Metric(s) against step (or against another metric, e.g. ``x="wall_time"``) per run.

    One subplot per metric, stacked; one color per run, shared across subplots.
    """
    runs = _as_runs(runs)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    logs = [log_y] * len(metrics) if isinstance(log_y, bool) else list(log_y)
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=metrics,
                        vertical_spacing=0.08 if len(metrics) > 1 else 0.0)
    for i, (label, h) in enumerate(runs.items()):
        for r, metric in enumerate(metrics, start=1):
            if metric not in h:
                continue
            steps, values = h.series(metric)
            if x != "step":
                xsteps, xvals = h.series(x)
                lookup = dict(zip(xsteps.tolist(), xvals.tolist()))
                keep = [k for k, s in enumerate(steps.tolist()) if s in lookup]
                steps = np.array([lookup[steps[k]] for k in keep])
                values = values[keep]
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=label,
                                     legendgroup=label, showlegend=r == 1,
                                     line=dict(color=color(i))), row=r, col=1)
        for r, log in enumerate(logs, start=1):
            if log:
                fig.update_yaxes(type="log", row=r, col=1)
    fig.update_xaxes(title_text=x, row=len(metrics), col=1)
    fig.update_layout(title=title, height=height or 260 * len(metrics) + 80,
                      margin=dict(l=50, r=20, t=60, b=40), template="plotly_white")
    return fig


def trajectory_figure(runs: History | Mapping[str, History], surface: str | None = None, *,
                      grid: int = 120, title: str | None = None) -> go.Figure:
    """Contours of a ``toy_envs.surfaces`` surface with each run's ``xy`` trajectory.

    The view holds the surface's plotting range, every start point and the paths (points of a run
    that blew up are left out of the view, :meth:`~toy_envs.surfaces.Surface.view`); each start is
    an open circle, and a run with ``meta['diverged']`` ends in a cross named after its step.
    """
    from toy_envs.surfaces import get_surface

    runs = _as_runs(runs)
    if surface is None:
        names = {h.meta.get("surface") for h in runs.values()} - {None}
        if len(names) != 1:
            raise ValueError(f"surface must be given when runs span surfaces {names or 'none'}")
        surface = names.pop()
    s = get_surface(surface)
    paths = {label: np.asarray(h["xy"], dtype=float) for label, h in runs.items() if "xy" in h}
    paths = {label: p[np.isfinite(p).all(1)] for label, p in paths.items()}
    starts = np.array([p[0] for p in paths.values() if len(p)]).reshape(-1, 2)
    steady = [p for label, p in paths.items() if runs[label].meta.get("diverged") is None]
    x_range, y_range = s.view(np.concatenate([starts, *steady]))   # a blow-up leaves the view
    xs, ys, z = s.grid(grid, x_range, y_range)
    z = z.numpy()
    if s.log_scale:
        z = np.log10(z - s.minimum + 1.0)
    fig = go.Figure(go.Contour(x=xs.numpy(), y=ys.numpy(), z=z, ncontours=30, showscale=False,
                               colorscale="Greys", opacity=0.6, line=dict(width=0.5),
                               name=f"{s.name}{' (log10 f+1)' if s.log_scale else ''}",
                               hoverinfo="skip"))
    lo, hi = np.array([x_range[0], y_range[0]]), np.array([x_range[1], y_range[1]])
    for i, (label, h) in enumerate(runs.items()):
        if label not in paths or not len(paths[label]):
            continue
        xy = paths[label]
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines+markers", name=label,
                                 legendgroup=label, marker=dict(size=3, color=color(i)),
                                 line=dict(color=color(i))))
        if h.meta.get("diverged") is not None:           # a cross at its last point in view
            inside = ((xy >= lo) & (xy <= hi)).all(1)
            last = xy[np.flatnonzero(inside)[-1]] if inside.any() else xy[0]
            fig.add_trace(go.Scatter(x=[last[0]], y=[last[1]], mode="markers", legendgroup=label,
                                     name=f"{label}: diverged at step {h.meta['diverged']}",
                                     marker=dict(symbol="x", size=12, color=color(i),
                                                 line=dict(color="black", width=1))))
    if len(starts):
        unique = np.unique(starts, axis=0)
        fig.add_trace(go.Scatter(x=unique[:, 0], y=unique[:, 1], mode="markers", name="start",
                                 marker=dict(symbol="circle-open", size=13, color="black",
                                             line=dict(width=2))))
    mins = np.array(s.minimizers)
    fig.add_trace(go.Scatter(x=mins[:, 0], y=mins[:, 1], mode="markers", name="minimum",
                             marker=dict(symbol="star", size=14, color="gold",
                                         line=dict(color="black", width=1))))
    fig.update_layout(title=title or f"{s.name}", template="plotly_white", height=480,
                      xaxis=dict(range=list(x_range), title="x"),
                      yaxis=dict(range=list(y_range), title="y"),
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig


def heatmap(matrix, *, x: Sequence | None = None, y: Sequence | None = None,
            title: str | None = None, colorscale: str = "RdBu", zmid: float | None = 0.0,
            x_title: str | None = None, y_title: str | None = None) -> go.Figure:
    """A matrix as a heatmap (rows = y, columns = x); NaN cells are left blank (e.g. padding)."""
    z = np.asarray(matrix, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {z.shape}")
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale=colorscale, zmid=zmid))
    fig.update_layout(title=title, template="plotly_white",
                      xaxis_title=x_title, yaxis_title=y_title, margin=dict(l=50, r=20, t=50, b=40))
    return fig


def history_figure(history: History | Mapping[str, History], *, max_metrics: int = 8) -> go.Figure:
    """Every scalar metric (up to ``max_metrics``) against step, one subplot each."""
    runs = _as_runs(history)
    scalar = []
    for h in runs.values():
        for key in h.keys:
            if key not in scalar and np.asarray(h[key]).ndim == 1:
                scalar.append(key)
    if not scalar:
        raise ValueError("history has no scalar metric to plot")
    return curves(runs, scalar[:max_metrics])


def bar(values: Mapping[str, float], *, title: str | None = None, y_title: str | None = None,
        log_y: bool = False) -> go.Figure:
    """A labelled bar chart (e.g. optimizer-state bytes per parameter by method)."""
    labels = list(values)
    fig = go.Figure(go.Bar(x=labels, y=[values[k] for k in labels],
                           marker_color=[color(i) for i in range(len(labels))]))
    fig.update_layout(title=title, yaxis_title=y_title, template="plotly_white",
                      margin=dict(l=50, r=20, t=50, b=40))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def grouped_bars(series: Mapping[str, Sequence[float]], x: Sequence[str], *, title: str | None = None,
                 y_title: str | None = None, height: int = 360) -> go.Figure:
    """Grouped bars: categories on x, one colored bar series per name (e.g. per estimator)."""
    fig = go.Figure([go.Bar(x=list(x), y=list(values), name=name, marker_color=color(k))
                     for k, (name, values) in enumerate(series.items())])
    fig.update_layout(barmode="group", template="plotly_white", title=title, yaxis_title=y_title,
                      margin=dict(l=50, r=20, t=50, b=40), height=height)
    return fig
