"""Figures of the continual-learning and generalisation-phenomena lessons (``go.Figure`` out).

- :func:`stability_gap_figure`: per-task accuracy after every iteration, the task switch, min-ACC
  and WC-ACC, and the end-of-task points that standard evaluation would report.
- :func:`useful_figure`: test accuracy (all / simple-feature / complex-only points), plain vs USEFUL.
- :func:`ibcl_figure`: per-task losses of IBCL's zero-shot preference models against one trained
  model per preference (the trade-off front).
- :func:`double_descent_figure`: test and train MSE against the number of random features.
- :func:`opposing_signals_figure`: per-group losses and the sharpness against ``2 / lr``.
- :func:`large_batch_figure`: test error per epoch and ``||w_t - w_0||`` against ``log t``.
- :func:`highdim_figure`: train and test error of the linear student over time.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from lab.history import History, Runs
from lab.viz.figures import color, make_subplots


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=60, r=20, t=60, b=40))
    return fig


def stability_gap_figure(history: History) -> go.Figure:
    """Accuracy of each task after every iteration; dotted: min-ACC and WC-ACC; markers: end of task."""
    fig = go.Figure()
    tasks = [k for k in history.keys if k.startswith("acc_task")]
    ends = history.artifacts.get("task_ends", [])
    for i, key in enumerate(tasks):
        steps, values = history.series(key)
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=f"task {i + 1}",
                                 line=dict(color=color(i))))
        if ends:
            fig.add_trace(go.Scatter(x=ends, y=[values[list(steps).index(e)] for e in ends],
                                     mode="markers", marker=dict(size=10, color=color(i), symbol="diamond"),
                                     name=f"task {i + 1} at task ends", showlegend=i == 0))
    for j, key in enumerate(("min_acc", "wc_acc")):
        if key in history:
            steps, values = history.series(key)
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=key.replace("_", "-").upper(),
                                     line=dict(color=color(5 + j), dash="dot")))
    for e in ends[:-1]:
        fig.add_vline(x=e + 0.5, line=dict(color="gray", dash="dash"))
    fig.update_xaxes(title_text="iteration")
    fig.update_yaxes(title_text="test accuracy", range=[0, 1.02])
    return _layout(fig, "continual evaluation: the stability gap after the task switch")


def useful_figure(history: History) -> go.Figure:
    """Grouped bars: accuracy of plain training and USEFUL on all, simple and complex-only points."""
    results = history.artifacts["results"]
    groups = [("accuracy", "all"), ("easy_accuracy", "with simple feature"),
              ("hard_accuracy", "complex-only")]
    fig = go.Figure()
    for i, (method, r) in enumerate(results.items()):
        fig.add_trace(go.Bar(x=[g[1] for g in groups], y=[r[g[0]] for g in groups], name=method,
                             marker_color=color(i), text=[f"{r[g[0]]:.3f}" for g in groups]))
    lo = min(min(r[g[0]] for g in groups) for r in results.values())
    fig.update_yaxes(title_text="test accuracy", range=[max(0.0, lo - 0.1), 1.0])
    fig.update_xaxes(title_text="test points")
    purity = history.artifacts.get("hard_purity", float("nan"))
    base = history.artifacts.get("complex_only_rate", float("nan"))
    return _layout(fig, f"USEFUL: hard cluster is {purity:.0%} complex-only (base rate {base:.0%})")


def ibcl_figure(history: History) -> go.Figure:
    """Loss on task 1 against task 2 for each preference: IBCL (zero-shot) and per-preference training."""
    ibcl, base, w = history["ibcl_loss"], history["baseline_loss"], history["w"]
    text = ["w=(" + ", ".join(f"{v:.2f}" for v in row) + ")" for row in w]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=base[:, 0], y=base[:, 1], mode="markers", name="trained per preference",
                             marker=dict(color=color(1), size=8, symbol="x"), text=text))
    fig.add_trace(go.Scatter(x=ibcl[:, 0], y=ibcl[:, 1], mode="markers", name="IBCL (zero-shot)",
                             marker=dict(color=w[:, 0], colorscale="Viridis", size=9,
                                         colorbar=dict(title="w_1", orientation="h", y=-0.3, yanchor="top",
                                                       len=0.5, thickness=10)), text=text))
    fig.update_xaxes(title_text="loss on task 1")
    fig.update_yaxes(title_text="loss on task 2")
    return _layout(fig, "IBCL: one model per preference, no training per preference", height=440)


def double_descent_figure(history: History) -> go.Figure:
    """Test (top) and train (bottom) MSE against p: min-norm fit and budgeted GD; line at p = n."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    p = history["p"]
    for i, (key, label) in enumerate((("", "min-norm / ridge"), ("_gd", "gradient descent"))):
        fig.add_trace(go.Scatter(x=p, y=history["test_mse" + key], mode="lines+markers", name=label,
                                 line=dict(color=color(i)), legendgroup=label), row=1, col=1)
        fig.add_trace(go.Scatter(x=p, y=np.maximum(history["train_mse" + key], 1e-12),
                                 mode="lines+markers", name=label, showlegend=False,
                                 line=dict(color=color(i)), legendgroup=label), row=2, col=1)
    n = history.meta.get("config", {}).get("n_train")
    if n:
        fig.add_vline(x=n, line=dict(color="gray", dash="dash"))
    fig.update_xaxes(type="log", title_text="random features p", row=2, col=1)
    fig.update_xaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", title_text="test MSE", row=1, col=1)
    fig.update_yaxes(type="log", title_text="train MSE", row=2, col=1)
    return _layout(fig, "model-wise double descent (dashed: p = n)", height=560)


def opposing_signals_figure(history: History) -> go.Figure:
    """Per-group losses (top) and the top Hessian eigenvalue against 2/lr (bottom)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    for i, (key, label) in enumerate((("loss", "all"), ("loss_normal", "normal"),
                                      ("loss_a", "group A"), ("loss_b", "group B"))):
        if key in history:
            steps, values = history.series(key)
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=label,
                                     line=dict(color=color(i))), row=1, col=1)
    steps, values = history.series("sharpness")
    fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name="λ_max",
                             line=dict(color=color(4))), row=2, col=1)
    two = history.artifacts.get("two_over_lr")
    if two is not None:
        fig.add_hline(y=two, line=dict(color="gray", dash="dash"), row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_yaxes(title_text="loss per group", row=1, col=1)
    fig.update_yaxes(title_text="sharpness λ_max", row=2, col=1)
    return _layout(fig, "opposing signals (dashed: 2 / lr)", height=560)


def large_batch_figure(runs: History | Mapping[str, History]) -> go.Figure:
    """Test error per epoch (left) and ||w_t - w_0|| against the update count, log x (right)."""
    if isinstance(runs, History):
        runs = Runs({str(runs.meta.get("algorithm", "run")): runs})
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=["test error", "‖w_t − w_0‖ against log t"])
    for i, (label, h) in enumerate(runs.items()):
        _, err = h.series("test_error")
        fig.add_trace(go.Scatter(x=h["epoch"], y=err, mode="lines+markers", name=label,
                                 legendgroup=label, line=dict(color=color(i))), row=1, col=1)
        steps, dist = h.series("distance")
        fig.add_trace(go.Scatter(x=steps + 1, y=dist, mode="lines", name=label, showlegend=False,
                                 legendgroup=label, line=dict(color=color(i))), row=1, col=2)
    fig.update_xaxes(title_text="epoch", row=1, col=1)
    fig.update_xaxes(title_text="update t", type="log", row=1, col=2)
    fig.update_yaxes(title_text="test error", row=1, col=1)
    fig.update_yaxes(title_text="‖w_t − w_0‖", row=1, col=2)
    return _layout(fig, "large-batch generalization gap")


def highdim_figure(runs: History | Mapping[str, History]) -> go.Figure:
    """Train (dashed) and test (solid) error against GD step, log x."""
    if isinstance(runs, History):
        runs = Runs({f"alpha={runs.meta.get('config', {}).get('alpha', '?')}": runs})
    fig = go.Figure()
    for i, (label, h) in enumerate(runs.items()):
        steps, test = h.series("test_error")
        fig.add_trace(go.Scatter(x=steps + 1, y=test, mode="lines", name=f"{label} test",
                                 line=dict(color=color(i))))
        steps, train = h.series("train_error")
        fig.add_trace(go.Scatter(x=steps + 1, y=train, mode="lines", name=f"{label} train",
                                 line=dict(color=color(i), dash="dash")))
    fig.update_xaxes(title_text="GD step + 1", type="log")
    fig.update_yaxes(title_text="mean squared error", type="log")
    return _layout(fig, "linear student, noisy teacher: overtraining near n = d")


__all__ = ["stability_gap_figure", "useful_figure", "ibcl_figure", "double_descent_figure",
           "opposing_signals_figure", "large_batch_figure", "highdim_figure"]
