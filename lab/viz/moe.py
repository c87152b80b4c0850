"""Figures for MoE load balancing: expert load over steps, balance curves, biases, primal-dual view.

- :func:`load_heatmap`: relative load ``A_i / mean(A)`` (steps x experts) per run, side by side.
- :func:`layer_load_heatmaps`: the same for every layer of a multi-layer model (``layer_load``),
  one row of heatmaps per run (e.g. with and without a balancer on a Hugging Face model).
- :func:`balance_curves`: max violation, loss, interference and gate distortion against step.
- :func:`loss_gap`: each run's loss minus a reference run's (same seed, same batches), smoothed: the
  price a balancer pays in the main loss, too small to see on the loss curves themselves.
- :func:`bias_figure`: each expert's bias (the dual price) over time for the controller runs.
- :func:`primal_dual_figure`: the Lagrangian (deterministic) or the cumulative regret (online)
  against step, with the max violation.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from lab.history import History
from lab.viz.figures import _as_runs, color, curves, make_subplots, _themed


def relative_load(history: History) -> np.ndarray:
    """``A_i / mean(A)`` per step, shape (steps, E); 1 everywhere = balanced."""
    load = np.asarray(history["load"], dtype=float)
    mean = load.mean(axis=1, keepdims=True)
    return np.divide(load, mean, out=np.ones_like(load), where=mean > 0)


def load_heatmap(runs: History | Mapping[str, History], *, zmax: float = 3.0,
                 title: str | None = None) -> go.Figure:
    """One heatmap per run: expert (y) by step (x), colour = load relative to the mean."""
    runs = _as_runs(runs)
    labels = [label for label, h in runs.items() if "load" in h]
    if not labels:
        raise ValueError("no run has a 'load' metric")
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, shared_yaxes=True,
                        horizontal_spacing=0.02)
    for c, label in enumerate(labels, start=1):
        h = runs[label]
        rel = relative_load(h)
        fig.add_trace(go.Heatmap(z=rel.T, x=h.series("load")[0], y=list(range(rel.shape[1])), zmin=0.0,
                                 zmax=zmax, colorscale="RdBu_r", zmid=1.0, showscale=c == len(labels),
                                 colorbar=dict(title="A/mean")), row=1, col=c)
        fig.update_xaxes(title_text="step", row=1, col=c)
    fig.update_yaxes(title_text="expert", row=1, col=1)
    fig.update_layout(title=title or "expert load over steps (1 = balanced)",
                      height=320, margin=dict(l=60, r=20, t=60, b=40))
    return fig


def layer_load_heatmaps(runs: History | Mapping[str, History], *, zmax: float = 3.0,
                        title: str | None = None) -> go.Figure:
    """Rows = runs, columns = layers: expert (y) by step (x), colour = load relative to the layer's mean."""
    runs = _as_runs(runs)
    labels = [label for label, h in runs.items() if "layer_load" in h]
    if not labels:
        raise ValueError("no run has a 'layer_load' metric")
    n_layers = max(np.asarray(runs[label]["layer_load"]).shape[1] for label in labels)
    names = [f"{label} · layer {j}" for label in labels for j in range(n_layers)]
    fig = make_subplots(rows=len(labels), cols=n_layers, subplot_titles=names, shared_xaxes=True,
                        shared_yaxes=True, horizontal_spacing=0.03, vertical_spacing=0.12)
    for r, label in enumerate(labels, start=1):
        steps, load = runs[label].series("layer_load")  # (steps, L, E)
        load = np.asarray(load, dtype=float)
        mean = load.mean(axis=2, keepdims=True)
        rel = np.divide(load, mean, out=np.ones_like(load), where=mean > 0)
        for j in range(load.shape[1]):
            fig.add_trace(go.Heatmap(z=rel[:, j].T, x=steps, y=list(range(load.shape[2])), zmin=0.0, zmax=zmax,
                                     colorscale="RdBu_r", zmid=1.0, showscale=r == 1 and j == 0,
                                     colorbar=dict(title="A/mean")), row=r, col=j + 1)
            fig.update_xaxes(title_text="step", row=r, col=j + 1)
        fig.update_yaxes(title_text="expert", row=r, col=1)
    _themed(fig).update_layout(title=title or "per-layer expert load over training (1 = balanced)",
                              height=220 * len(labels) + 80, margin=dict(l=50, r=20, t=70, b=40))
    return fig


def balance_curves(runs: History | Mapping[str, History],
                   metrics: Sequence[str] = ("max_violation", "loss", "interference", "gate_distortion"),
                   title: str | None = None) -> go.Figure:
    """Stacked curves of balance and loss metrics, one colour per run."""
    runs = _as_runs(runs)
    present = [m for m in metrics if any(m in h for h in runs.values())]
    if not present:
        raise ValueError(f"none of the metrics {list(metrics)} is in the runs")
    return curves(runs, present, title=title)


def loss_gap(runs: Mapping[str, History], reference: str = "none", *, window: int = 10,
             title: str | None = None) -> go.Figure:
    """``loss(run) - loss(reference)`` per step, moving average over ``window`` steps; one line per run."""
    runs = _as_runs(runs)
    if reference not in runs:
        raise ValueError(f"reference run {reference!r} not among {list(runs)}")
    ref = np.asarray(runs[reference]["loss"], dtype=float)
    fig = go.Figure()
    for i, (label, h) in enumerate(runs.items()):
        if label == reference:
            continue
        gap = np.asarray(h["loss"], dtype=float)[: len(ref)] - ref[: len(h["loss"])]
        w = max(1, min(window, len(gap)))
        smooth = np.convolve(gap, np.ones(w) / w, mode="valid")
        fig.add_trace(go.Scatter(x=h.series("loss")[0][w - 1: len(gap)], y=smooth, mode="lines", name=label,
                                 line=dict(color=color(i))))
    fig.add_hline(y=0.0, line=dict(color="gray", dash="dot"))
    _themed(fig).update_layout(title=title or f"loss minus the {reference!r} run's (moving average of {window} steps)",
                      height=300, xaxis_title="step", yaxis_title="Δ loss",
                      margin=dict(l=50, r=20, t=60, b=40))
    return fig


def bias_figure(runs: History | Mapping[str, History], title: str | None = None) -> go.Figure:
    """Each expert's bias over steps; one subplot per run that has biases (controllers)."""
    runs = _as_runs(runs)
    labels = [label for label, h in runs.items() if "bias" in h]
    fig = make_subplots(rows=1, cols=max(1, len(labels)), subplot_titles=labels or ["no bias controller"],
                        shared_yaxes=True, horizontal_spacing=0.03)
    for c, label in enumerate(labels, start=1):
        steps, bias = runs[label].series("bias")
        bias = np.where(np.isfinite(bias), bias, np.nan)  # an exhausted expert's log-price is -inf
        for i in range(bias.shape[1]):
            fig.add_trace(go.Scatter(x=steps, y=bias[:, i], mode="lines", name=f"expert {i}",
                                     legendgroup=f"e{i}", showlegend=c == 1, line=dict(color=color(i))),
                          row=1, col=c)
        fig.update_xaxes(title_text="step", row=1, col=c)
    fig.update_yaxes(title_text="bias b_i", row=1, col=1)
    fig.update_layout(title=title or "biases (dual prices) over steps", height=320,
                      margin=dict(l=60, r=20, t=60, b=40))
    return fig


def primal_dual_figure(runs: History | Mapping[str, History], title: str | None = None) -> go.Figure:
    """Lagrangian or cumulative regret (whichever the runs have) and the max violation."""
    runs = _as_runs(runs)
    first = "regret" if any("regret" in h for h in runs.values()) else "lagrangian"
    fig = curves(runs, [first, "max_violation"], title=title or f"primal-dual view: {first}")
    if first == "regret":  # log n regret is a straight line on a log-x axis
        fig.update_xaxes(type="log", row=1, col=1)
        fig.update_xaxes(type="log", row=2, col=1)
    return fig


__all__ = ["balance_curves", "bias_figure", "layer_load_heatmaps", "load_heatmap", "loss_gap", "primal_dual_figure",
           "relative_load"]
