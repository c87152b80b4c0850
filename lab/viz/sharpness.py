"""Figures of the sharpness lesson: where runs end on the sharp/flat toy, and curves over training.

- :func:`sharp_flat_figure`: contours of the toy loss, each optimizer's paths and end points.
- :func:`sharpness_curves`: loss / accuracy / top Hessian eigenvalue against step, per optimizer.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from lab.history import History, Runs
from lab.viz.figures import color, curves


def _as_runs(result: History | Mapping[str, History]) -> Runs:
    if isinstance(result, History):
        return Runs({str(result.meta.get("algorithm", "run")): result})
    return result if isinstance(result, Runs) else Runs(result)


def sharp_flat_figure(result: History | Mapping[str, History], *, grid: int = 100) -> go.Figure:
    """Contours of the sharp/flat toy with every run's paths (lines) and end points (markers)."""
    from toy_envs.sharp_flat import BOX, FLAT, SHARP, sharp_flat_loss

    runs = _as_runs(result)
    xs = torch.linspace(BOX[0][0] - 0.5, BOX[0][1] + 0.5, grid, dtype=torch.float64)
    ys = torch.linspace(BOX[1][0] - 0.5, BOX[1][1] + 0.5, grid, dtype=torch.float64)
    xx, yy = torch.meshgrid(xs, ys, indexing="xy")
    z = sharp_flat_loss(torch.stack([xx, yy], -1)).numpy()
    fig = go.Figure(go.Contour(x=xs.numpy(), y=ys.numpy(), z=z, ncontours=30, showscale=False,
                               colorscale="Greys", opacity=0.6, line=dict(width=0.5),
                               hoverinfo="skip", name="loss"))
    for i, (label, h) in enumerate(runs.items()):
        paths = np.asarray(h.artifacts.get("paths", []), dtype=float)  # (K, T, 2)
        if paths.size == 0:
            continue
        # every start's path in one trace, separated by gaps (NaN): one trace per optimizer, as
        # float arrays (they travel to the browser as binary buffers, not as JSON lists)
        joined = np.concatenate([paths, np.full((len(paths), 1, 2), np.nan)], axis=1)
        joined = joined.reshape(-1, 2)[:-1]                       # (K (T + 1) - 1, 2)
        fig.add_trace(go.Scatter(x=joined[:, 0], y=joined[:, 1], mode="lines", legendgroup=label,
                                 showlegend=False, line=dict(color=color(i), width=1),
                                 opacity=0.5, hoverinfo="skip", connectgaps=False))
        fig.add_trace(go.Scatter(x=paths[:, -1, 0], y=paths[:, -1, 1], mode="markers", name=label,
                                 legendgroup=label, marker=dict(size=9, color=color(i),
                                                                line=dict(color="black", width=1))))
    for (center, _, _), name in ((SHARP, "sharp minimum"), (FLAT, "flat minimum")):
        fig.add_trace(go.Scatter(x=[center[0]], y=[center[1]], mode="markers+text", text=[name],
                                 textposition="top center", showlegend=False,
                                 marker=dict(symbol="star", size=14, color="gold",
                                             line=dict(color="black", width=1))))
    fig.update_layout(title="sharp vs flat minimum: paths and end points",
                      height=460, xaxis_title="w1", yaxis_title="w2",
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig


def sharpness_curves(result: History | Mapping[str, History],
                     metrics: Sequence[str] = ("loss", "top_eigenvalue", "sharp_frac", "saddle_frac")) -> go.Figure:
    """Metrics against step, one subplot each, one color per optimizer."""
    runs = _as_runs(result)
    return curves(runs, list(metrics), log_y=[m == "top_eigenvalue" for m in metrics])


__all__ = ["sharp_flat_figure", "sharpness_curves"]
