"""Figures of the solver experiments: IPS convergence, learned vs true graphs."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from lab.history import History
from lab.viz.figures import Grid


def ips_figure(h: History) -> go.Figure:
    """NLL suboptimality and margin mismatch per sweep (log y); observed vs fitted table (summed over K)."""
    grid = Grid(rows=1, cols=3, horizontal_spacing=0.1,
                subplot_titles=("NLL - min NLL (per sweep)", "observed (summed over K)", "IPS fit (summed over K)"))
    steps, gap = h.series("suboptimality")
    keep = gap > 0
    grid.add(dict(type="scatter", x=steps[keep], y=gap[keep], mode="lines+markers", name="NLL gap"), 1, 1)
    if "max_violation" in h:
        vsteps, violation = h.series("max_violation")
        grid.add(dict(type="scatter", x=vsteps, y=np.maximum(violation, 1e-16), mode="lines+markers",
                      name="max |X^T(y - mu)|"), 1, 1)
    observed, fitted = np.asarray(h.artifacts["observed"]), np.asarray(h.artifacts["fitted"])
    top = max(observed.max(), fitted.max())
    for col, z in ((2, observed), (3, fitted)):
        grid.add(dict(type="heatmap", z=z, zmin=0, zmax=top, colorscale="Blues", showscale=col == 3, name="counts",
                      colorbar=dict(title=dict(text="count"), x=1.0, xanchor="left"),
                      text=np.round(z, 1), texttemplate="%{text}"), 1, col)
        grid.xaxis(1, col, title="column")
        grid.yaxis(1, col, title="row")
    grid.yaxis(1, 1, type="log", title="NLL gap / violation")
    grid.xaxis(1, 1, title="sweep")
    return grid.figure(height=360, margin=dict(l=60, r=20, t=50, b=40),
                       legend=dict(orientation="h", x=0.0, y=-0.25, yanchor="top"))


def graph_figure(h: History) -> go.Figure:
    """Objective per iteration; true and learned adjacency (1 = edge) side by side."""
    errors = h.artifacts.get("errors")
    grid = Grid(rows=1, cols=3, horizontal_spacing=0.1, subplot_titles=(
        "objective", "true graph", f"learned graph ({errors} wrong)" if errors is not None else "learned graph"))
    grid.add(dict(type="scatter", x=h.steps, y=h["loss"], mode="lines+markers", name="objective"), 1, 1)
    for col, key in ((2, "true_adjacency"), (3, "adjacency")):
        grid.add(dict(type="heatmap", z=np.asarray(h.artifacts[key]), zmin=0, zmax=1, colorscale="Greys",
                      showscale=False), 1, col)
        grid.yaxis(1, col, autorange="reversed", title="from node")
        grid.xaxis(1, col, title="to node")
    grid.xaxis(1, 1, title="iteration")
    grid.yaxis(1, 1, title="objective")
    return grid.figure(height=340, margin=dict(l=60, r=20, t=50, b=40), showlegend=False)
