"""Plotly figure builders: a History (or Runs) in, a ``go.Figure`` out. No widget needed.

Every figure of the lab uses one plotly template, :data:`TEMPLATE` (registered as ``"trainlab"``
and made plotly's default when :mod:`lab.viz` is imported): white, a lean layout-only template
(small to send, fast to build), readable exponents (``1e-3``, never SI prefixes such as ``100μ``
or ``1T``) on every axis, legends outside the plotting area, the lab's palette. Builders label
every axis they draw data on; ``tests/test_figure_hygiene.py`` walks every builder and checks it.

- :func:`curves`: one metric (or several, as stacked subplots) against step for several runs.
- :func:`trajectory_figure`: a surface's contours with the optimizer trajectories of runs.
- :func:`heatmap`: a matrix (per-token advantages, expert load over steps) as a heatmap.
- :func:`history_figure`: every scalar metric of a History, one subplot each (the CLI default).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots as _make_subplots

from lab.history import History, Runs

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
GRID, LINE, INK = "#E5EAF2", "#B8C2D0", "#2a3f5f"
_AXIS = dict(gridcolor=GRID, linecolor=LINE, zerolinecolor="#CFD6E2", zerolinewidth=1.2, showline=True,
             ticks="outside", tickcolor=LINE, ticklen=4, automargin=True, exponentformat="e",
             showexponent="all", title=dict(standoff=6, font=dict(size=12)))
TEMPLATE_NAME = "trainlab"
TEMPLATE = go.layout.Template(layout=dict(
    font=dict(family="Helvetica Neue, Helvetica, Arial, sans-serif", size=12, color=INK),
    paper_bgcolor="white", plot_bgcolor="white", colorway=list(PALETTE),
    xaxis=_AXIS, yaxis=_AXIS,
    legend=dict(bgcolor="rgba(255,255,255,0)", borderwidth=0, tracegroupgap=2, font=dict(size=11)),
    title=dict(x=0.0, xref="paper", xanchor="left", font=dict(size=14)),
    coloraxis=dict(colorbar=dict(outlinewidth=0, ticks="outside", len=0.8, thickness=14,
                                 exponentformat="e")),
    colorscale=dict(sequential="Viridis", diverging="RdBu"),
    hovermode="closest", hoverlabel=dict(align="left"),
    margin=dict(l=60, r=20, t=60, b=50),
))
"""The lab's plotly template (layout only)."""
pio.templates[TEMPLATE_NAME] = TEMPLATE
pio.templates.default = TEMPLATE_NAME


def _themed(fig: go.Figure) -> go.Figure:
    """Give ``fig`` the lab's template, cheaply; returns ``fig``.

    ``update_layout(template=TEMPLATE)`` re-validates the whole template (about 30 ms, several
    times a figure's own cost); :data:`TEMPLATE` is valid already, so it is assigned the way plotly
    assigns its default template to a new figure, with validation off for that one assignment.
    """
    layout = fig.layout
    validate = layout._validate
    layout._validate = False
    try:
        layout.template = TEMPLATE
    finally:
        layout._validate = validate
    return fig


SUBPLOT_TITLE_SIZE = 13


def make_subplots(rows: int = 1, cols: int = 1, *, shared_xaxes: bool = False, shared_yaxes: bool = False,
                  horizontal_spacing: float | None = None, vertical_spacing: float | None = None,
                  subplot_titles: Sequence[str] | None = None, **kwargs) -> go.Figure:
    """``plotly.subplots.make_subplots`` for a plain grid of x-y subplots, built directly.

    Plotly's own ``make_subplots`` takes tens of milliseconds per call (it validates the layout
    piece by piece); this writes the same layout (domains, anchors, shared axes as ``matches``
    with the inner tick labels hidden, subplot titles as paper annotations) and the same grid
    reference in one go, so ``add_trace(row=, col=)`` and ``update_xaxes(row=, col=)`` work as
    usual (``tests/test_figure_hygiene.py`` compares both). Other options (``specs``, ...) go to
    plotly's function.
    """
    if kwargs or shared_xaxes not in (True, False) or shared_yaxes not in (True, False):
        return _make_subplots(rows=rows, cols=cols, shared_xaxes=shared_xaxes, shared_yaxes=shared_yaxes,
                              horizontal_spacing=horizontal_spacing, vertical_spacing=vertical_spacing,
                              subplot_titles=subplot_titles,
                              figure=kwargs.pop("figure", None) or _themed(go.Figure()),
                              **kwargs)
    layout, grid, grid_str = _grid_layout(rows, cols, shared_xaxes=shared_xaxes, shared_yaxes=shared_yaxes,
                                          horizontal_spacing=horizontal_spacing,
                                          vertical_spacing=vertical_spacing, subplot_titles=subplot_titles)
    return _with_grid(_themed(go.Figure(layout=layout)), grid, grid_str)


def _with_grid(fig: go.Figure, grid: list, grid_str: str) -> go.Figure:
    """Attach a subplot grid reference, so ``add_trace(row=, col=)`` etc. work on ``fig``."""
    fig._grid_ref = grid
    fig._grid_str = grid_str
    return fig


def _axis_suffix(row: int, col: int, cols: int) -> str:
    """``""``, ``"2"``, ... of the subplot at 1-based ``(row, col)`` of a grid with ``cols`` columns."""
    k = (row - 1) * cols + col
    return "" if k == 1 else str(k)


def _grid_layout(rows: int, cols: int, *, shared_xaxes: bool, shared_yaxes: bool,
                 horizontal_spacing: float | None, vertical_spacing: float | None,
                 subplot_titles: Sequence[str] | None) -> tuple[dict, list, str]:
    """The layout dict, grid reference and grid string of :func:`make_subplots`'s fast path."""
    from plotly._subplots import SubplotRef

    hs = 0.2 / cols if horizontal_spacing is None else horizontal_spacing
    vs = (0.5 if subplot_titles else 0.3) / rows if vertical_spacing is None else vertical_spacing
    width, height = (1.0 - hs * (cols - 1)) / cols, (1.0 - vs * (rows - 1)) / rows
    layout: dict = {}
    grid, annotations = [], []
    titles = list(subplot_titles or [])
    for r in range(rows):
        grid_row = []
        for c in range(cols):
            k = r * cols + c + 1
            suffix = "" if k == 1 else str(k)
            x0 = c * (width + hs)
            y1 = 1.0 - r * (height + vs)
            xdom, ydom = [x0, min(1.0, x0 + width)], [max(0.0, y1 - height), y1]
            xaxis, yaxis = {"anchor": f"y{suffix}", "domain": xdom}, {"anchor": f"x{suffix}", "domain": ydom}
            if shared_xaxes and r < rows - 1:
                bottom = (rows - 1) * cols + c + 1
                xaxis.update(matches=f"x{'' if bottom == 1 else bottom}", showticklabels=False)
            if shared_yaxes and c > 0:
                first = r * cols + 1
                yaxis.update(matches=f"y{'' if first == 1 else first}", showticklabels=False)
            layout[f"xaxis{suffix}"], layout[f"yaxis{suffix}"] = xaxis, yaxis
            if k - 1 < len(titles) and titles[k - 1]:
                annotations.append(dict(text=titles[k - 1], x=(xdom[0] + xdom[1]) / 2, y=ydom[1], xref="paper",
                                        yref="paper", xanchor="center", yanchor="bottom", showarrow=False,
                                        font=dict(size=SUBPLOT_TITLE_SIZE)))
            grid_row.append((SubplotRef("xy", (f"xaxis{suffix}", f"yaxis{suffix}"),
                                        {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}),))
        grid.append(grid_row)
    if annotations:
        layout["annotations"] = annotations
    grid_str = "\n".join("  ".join(f"[ ({r + 1},{c + 1}) ]" for c in range(cols)) for r in range(rows))
    return layout, grid, grid_str


class Grid:
    """A grid of x-y subplots written as plain dicts and validated once, in :meth:`figure`.

    The figure is the one :func:`make_subplots` + ``add_trace(row=, col=)`` +
    ``update_xaxes/update_yaxes(row=, col=)`` + ``update_layout`` give, at a fraction of the cost
    (each of those calls walks plotly's property tree and re-dispatches the layout; a live panel
    redraws every few steps). ``title`` given as a string means ``dict(text=title)``.
    """

    def __init__(self, rows: int = 1, cols: int = 1, *, shared_xaxes: bool = False, shared_yaxes: bool = False,
                 horizontal_spacing: float | None = None, vertical_spacing: float | None = None,
                 subplot_titles: Sequence[str] | None = None):
        self.rows, self.cols = rows, cols
        self.layout, self._grid, self._grid_str = _grid_layout(
            rows, cols, shared_xaxes=shared_xaxes, shared_yaxes=shared_yaxes,
            horizontal_spacing=horizontal_spacing, vertical_spacing=vertical_spacing,
            subplot_titles=subplot_titles)
        self.traces: list[dict] = []

    def add(self, trace: dict, row: int | None = None, col: int | None = None) -> None:
        """Add a trace (a plotly trace dict with ``type``), in subplot ``(row, col)`` if given."""
        if row is not None:
            suffix = _axis_suffix(row, col or 1, self.cols)
            trace = dict(trace, xaxis=f"x{suffix}", yaxis=f"y{suffix}")
        self.traces.append(trace)

    def _axis(self, letter: str, row: int, col: int, props: Mapping) -> None:
        axis = self.layout[f"{letter}axis{_axis_suffix(row, col, self.cols)}"]
        for key, value in props.items():
            if key == "title" and isinstance(value, str):
                value = dict(text=value)
            axis[key] = value

    def xaxis(self, row: int = 1, col: int = 1, **props) -> None:
        """Set properties of subplot ``(row, col)``'s x axis."""
        self._axis("x", row, col, props)

    def yaxis(self, row: int = 1, col: int = 1, **props) -> None:
        """Set properties of subplot ``(row, col)``'s y axis."""
        self._axis("y", row, col, props)

    def figure(self, **layout) -> go.Figure:
        """The ``go.Figure`` (with the lab's template and the grid reference), ``layout`` on top."""
        if isinstance(layout.get("title"), str):
            layout["title"] = dict(text=layout["title"])
        fig = go.Figure(data=self.traces, layout={**self.layout, **layout})
        return _with_grid(_themed(fig), self._grid, self._grid_str)


def pending(title: str, what: str = "this figure", height: int = 300) -> go.Figure:
    """A placeholder while a run streams: ``what`` is drawn from a result the run writes at its end
    (an artifact such as the last batch), so a live panel shows this until then."""
    fig = _themed(go.Figure())
    fig.add_annotation(text=f"{what} appears when the run ends", x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font=dict(size=13, color="#8a94a6"))
    fig.update_layout(title=title, height=height, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=60, r=20, t=50, b=40))
    return fig


def _as_runs(runs: History | Mapping[str, History]) -> Runs:
    if isinstance(runs, History):
        return Runs({str(runs.meta.get("algorithm", "run")): runs})
    return runs if isinstance(runs, Runs) else Runs(runs)


def color(i: int) -> str:
    """The i-th color of the lab's palette (one color per run across all subplots)."""
    return PALETTE[i % len(PALETTE)]


LABELS = {"kl": "KL", "clip_frac": "clip fraction", "clip_frac_low": "clip fraction (low)",
          "clip_frac_high": "clip fraction (high)", "wall_time": "wall time (s)", "lr": "learning rate",
          "adv_mean": "mean advantage", "adv_std": "advantage std", "grad_norm": "gradient norm",
          "max_violation": "max violation", "test_accuracy": "test accuracy", "test_loss": "test loss",
          "eval_reward": "evaluation reward", "top_eigenvalue": "top Hessian eigenvalue λ_max",
          "sharp_frac": "share in the sharp minimum", "saddle_frac": "share at the saddle",
          "cpr": "complete policy regret", "response_length": "response length"}
"""Readable axis names of common metrics (others: underscores become spaces)."""


def label(metric: str) -> str:
    """A metric name as an axis title: ``"clip_frac"`` -> ``"clip fraction"``."""
    return LABELS.get(metric, metric.replace("_", " "))


def dash_legend(fig: go.Figure, meanings: Mapping[str, str], *, color: str = "#555") -> go.Figure:
    """Grey legend-only entries saying what each dash style means, e.g. ``{"solid": "reward",
    "dash": "accuracy"}``, for figures whose colours are runs and whose dashes are metrics."""
    fig.add_traces(dash_legend_traces(meanings, color=color))
    return fig


def dash_legend_traces(meanings: Mapping[str, str], *, color: str = "#555") -> list[dict]:
    """The traces :func:`dash_legend` adds, as plotly trace dicts (for builders that write a
    figure in one go)."""
    return [dict(type="scatter", x=[None], y=[None], mode="lines", name=meaning, legendgroup=f"dash {dash}",
                 line=dict(color=color, dash=dash), hoverinfo="skip") for dash, meaning in meanings.items()]


def curves(runs: History | Mapping[str, History], metrics: str | Sequence[str], *,
           x: str = "step", log_y: bool | Sequence[bool] = False, title: str | None = None,
           height: int | None = None) -> go.Figure:
    """Metric(s) against step (or against another metric, e.g. ``x="wall_time"``) per run.

    One subplot per metric, stacked; one color per run, shared across subplots.
    """
    runs = _as_runs(runs)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    logs = [log_y] * len(metrics) if isinstance(log_y, bool) else list(log_y)
    # the same figure as make_subplots + add_trace(row=) + update_yaxes(row=) would give, written
    # as one layout dict and trace dicts and validated once (incremental updates cost ~10x more)
    layout, grid, grid_str = _grid_layout(len(metrics), 1, shared_xaxes=True, shared_yaxes=False,
                                          horizontal_spacing=None, subplot_titles=None,
                                          vertical_spacing=0.05 if len(metrics) > 1 else 0.0)
    traces = []
    for i, (name, h) in enumerate(runs.items()):
        shown = False
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
            suffix = _axis_suffix(r, 1, 1)
            traces.append(dict(type="scatter", x=steps, y=values, mode="lines", name=name,
                               legendgroup=name, showlegend=not shown, line=dict(color=color(i)),
                               xaxis=f"x{suffix}", yaxis=f"y{suffix}"))
            shown = True
    for r, (metric, log) in enumerate(zip(metrics, logs), start=1):
        axis = layout[f"yaxis{_axis_suffix(r, 1, 1)}"]
        axis["title"] = dict(text=label(metric))
        if log:
            axis["type"] = "log"
    layout[f"xaxis{_axis_suffix(len(metrics), 1, 1)}"]["title"] = dict(text=label(x))
    layout.update(height=height or 220 * len(metrics) + 90, margin=dict(l=60, r=20, t=60 if title else 30, b=40))
    layout["title"] = {} if title is None else dict(text=title)
    return _with_grid(_themed(go.Figure(data=traces, layout=layout)), grid, grid_str)


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
    _themed(fig).update_layout(title=title or f"{s.name}", height=480,
                      xaxis=dict(range=list(x_range), title="x"),
                      yaxis=dict(range=list(y_range), title="y"),
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig


def heatmap(matrix, *, x: Sequence | None = None, y: Sequence | None = None,
            title: str | None = None, colorscale: str = "RdBu", zmid: float | None = 0.0,
            x_title: str = "column", y_title: str = "row", z_title: str | None = None) -> go.Figure:
    """A matrix as a heatmap (rows = y, columns = x); NaN cells are left blank (e.g. padding)."""
    z = np.asarray(matrix, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {z.shape}")
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale=colorscale, zmid=zmid,
                               colorbar=dict(title=z_title) if z_title else None))
    _themed(fig).update_layout(title=title,
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


def bar(values: Mapping[str, float], *, title: str | None = None, y_title: str = "value",
        log_y: bool = False, x_title: str = "method") -> go.Figure:
    """A labelled bar chart (e.g. optimizer-state bytes per parameter by method)."""
    labels = list(values)
    fig = go.Figure(go.Bar(x=labels, y=[values[k] for k in labels], showlegend=False,
                           marker_color=[color(i) for i in range(len(labels))]))
    _themed(fig).update_layout(title=title, yaxis_title=y_title, xaxis_title=x_title,
                      margin=dict(l=50, r=20, t=50, b=40))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def grouped_bars(series: Mapping[str, Sequence[float]], x: Sequence[str], *, title: str | None = None,
                 y_title: str = "value", height: int = 360, x_title: str = "response") -> go.Figure:
    """Grouped bars: categories on x, one colored bar series per name (e.g. per estimator)."""
    fig = go.Figure([go.Bar(x=list(x), y=list(values), name=name, marker_color=color(k))
                     for k, (name, values) in enumerate(series.items())])
    _themed(fig).update_layout(barmode="group", title=title, yaxis_title=y_title,
                      xaxis_title=x_title,
                      margin=dict(l=50, r=20, t=50, b=40), height=height)
    return fig
