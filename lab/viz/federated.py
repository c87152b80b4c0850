"""Figures of the federated lesson: a ``Runs`` of :func:`lab.federated.simulate` histories in, ``go.Figure`` out.

- :func:`convergence_figure`: global loss and distance to the optimum per algorithm.
- :func:`weights_figure`: the share of the aggregate each client received against its true
  participation rate p_i (FedAvg: grows with p_i, biased; FedAU: flat), and the learned 1/p_i
  estimates against the truth.
- :func:`drift_figure`: client drift (spread of the accepted updates) per round.
- :func:`participation_raster`: who took part in each round, refused uploads marked.
- :func:`dashboard`: the four together (a panel's plot).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from lab.history import History, Runs
from lab.viz.figures import Grid, color, curves, pending


def _runs(runs: History | Mapping[str, History]) -> Runs:
    if isinstance(runs, History):
        return Runs({str(runs.meta.get("algorithm", "run")): runs})
    return runs if isinstance(runs, Runs) else Runs(runs)


def convergence_figure(runs: History | Mapping[str, History]) -> go.Figure:
    """Global loss and (when the optimum is known) distance to x*, log scale, per algorithm."""
    runs = _runs(runs)
    metrics = ["loss"] + (["distance"] if all("distance" in h for h in runs.values()) else ["accuracy"])
    return curves(runs, metrics, log_y=[False, metrics[1] == "distance"], height=520,
                  title="global objective and distance to the optimum")


def weights_figure(runs: History | Mapping[str, History]) -> go.Figure:
    """Left: each client's share of the aggregate vs its true p_i. Right: learned 1/p_i vs true 1/p_i."""
    runs = _runs(runs)
    if not all("probabilities" in h.artifacts for h in runs.values()):     # written at the end of a run
        return pending("client's share of the aggregate vs participation rate", "each client's share")
    grid = Grid(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=(
        "client's share of the aggregate vs participation rate", "learned weight vs true 1/p"))
    p = None
    for i, (label, h) in enumerate(runs.items()):
        p = np.asarray(h.artifacts["probabilities"])
        share = np.asarray(h.artifacts["effective_weight"])
        share = share / share.sum() if share.sum() > 0 else share
        grid.add(dict(type="scatter", x=p, y=share, mode="markers", name=label, legendgroup=label,
                      marker=dict(color=color(i), size=8)), row=1, col=1)
        if "inverse_p_estimate" in h.artifacts:
            grid.add(dict(type="scatter", x=1 / p, y=h.artifacts["inverse_p_estimate"], mode="markers", name=label,
                          legendgroup=label, showlegend=False,
                          marker=dict(color=color(i), size=8, symbol="diamond")), row=1, col=2)
    if p is not None:
        n = len(p)
        grid.add(dict(type="scatter", x=[p.min(), p.max()], y=[1 / n, 1 / n], mode="lines",
                      name="unbiased share 1/N", line=dict(color="black", dash="dash")), row=1, col=1)
        grid.add(dict(type="scatter", x=[1 / p.max(), 1 / p.min()], y=[1 / p.max(), 1 / p.min()], mode="lines",
                      name="y = 1/p", line=dict(color="gray", dash="dot")), row=1, col=2)
    grid.xaxis(1, 1, title="true p_i")
    grid.yaxis(1, 1, title="share of aggregate")
    grid.xaxis(1, 2, title="true 1/p_i", type="log")
    grid.yaxis(1, 2, title="estimated 1/p_i", type="log")
    return grid.figure(height=380, margin=dict(l=60, r=20, t=60, b=40))


def drift_figure(runs: History | Mapping[str, History]) -> go.Figure:
    """Client drift: mean distance of the accepted updates from their mean, per round."""
    return curves(_runs(runs), "drift", log_y=True, height=320, title="client drift (spread of client updates)")


def participation_raster(history: History, *, title: str | None = None) -> go.Figure:
    """Rounds x clients: 1 where the client took part; refused uploads marked with an x."""
    part = np.asarray(history["participation"])  # (R, N)
    fig = go.Figure(go.Heatmap(z=part.T, colorscale=[[0, "#f4f4f4"], [1, "#1f77b4"]], showscale=False,
                               x=np.arange(1, part.shape[0] + 1), y=np.arange(part.shape[1])))
    dropped = history.artifacts.get("dropped", [])
    if dropped:
        fig.add_trace(go.Scatter(x=[d["round"] + 1 for d in dropped], y=[d["client"] for d in dropped],
                                 mode="markers", marker=dict(symbol="x", color="#d62728", size=7),
                                 text=[d["reason"] for d in dropped], name="refused upload"))
    fig.update_layout(title=title or f"participation ({history.meta.get('algorithm', '')})", height=320,
                      xaxis_title="round", yaxis_title="client",
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig


def dashboard(runs: History | Mapping[str, History]) -> list[go.Figure]:
    """Convergence, weights, drift and the participation raster of the first run."""
    runs = _runs(runs)
    first = next(iter(runs.values()))
    return [convergence_figure(runs), weights_figure(runs), drift_figure(runs), participation_raster(first)]


__all__ = ["convergence_figure", "weights_figure", "drift_figure", "participation_raster", "dashboard"]
