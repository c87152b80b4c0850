"""Figures of the RL lessons: training curves, per-token advantages, the advantage calculator.

- :func:`training_figure`: reward / accuracy, entropy, clip fraction and KL against step.
- :func:`advantage_heatmap`: the per-token advantages of a sampled batch (rows = responses).
- :func:`advantage_bars`: each estimator's advantages for one group of rewards, side by side.
- :func:`aggregation_weights`: the gradient weight per token each aggregation mode gives to
  responses of different lengths.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lab.history import History, Runs
from lab.viz.figures import _as_runs, color, heatmap

PANELS = (("reward", "accuracy"), ("entropy",), ("clip_frac",), ("kl",))


def training_figure(runs: History | Mapping[str, History], panels: Sequence[Sequence[str]] = PANELS,
                    height: int = 520) -> go.Figure:
    """A 2×2 grid of curves (reward and accuracy share a panel, dashed accuracy)."""
    runs: Runs = _as_runs(runs)
    titles = [" / ".join(p) for p in panels]
    rows = (len(panels) + 1) // 2
    fig = make_subplots(rows=rows, cols=2, subplot_titles=titles, horizontal_spacing=0.1,
                        vertical_spacing=0.15)
    for i, (label, h) in enumerate(runs.items()):
        for k, metrics in enumerate(panels):
            r, c = k // 2 + 1, k % 2 + 1
            for j, metric in enumerate(metrics):
                if metric not in h:
                    continue
                steps, values = h.series(metric)
                fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=label, legendgroup=label,
                                         showlegend=k == 0 and j == 0,
                                         line=dict(color=color(i), dash="dash" if j else "solid"),
                                         hovertemplate=f"{metric}: %{{y:.3g}}<extra>{label}</extra>"),
                              row=r, col=c)
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=50, r=20, t=50, b=40))
    return fig


def advantage_heatmap(history: History, title: str | None = None) -> go.Figure:
    """Per-token advantages of the last sampled batch (``artifacts['last_batch']``)."""
    art = history.artifacts.get("last_batch")
    if art is None:
        raise ValueError("history has no 'last_batch' artifact (run policy_optimization)")
    adv = np.array(art["advantages"], dtype=float)
    labels = [f"{i}: {t} (R={r:.2f})" for i, (t, r) in enumerate(zip(art["texts"], art["rewards"]))]
    fig = heatmap(adv, y=labels, x=list(range(adv.shape[1])), x_title="response token",
                  title=title or "advantage per token (last batch; blank = padding)")
    fig.update_yaxes(autorange="reversed", showticklabels=len(labels) <= 32)
    fig.update_layout(height=min(700, 120 + 14 * len(labels)))
    return fig


def advantage_bars(advantages: Mapping[str, Sequence[float]], rewards: Sequence[float],
                   title: str = "advantages of one group") -> go.Figure:
    """Grouped bars: one group of responses on x (labelled by reward), one color per estimator."""
    x = [f"y{i} (R={r:g})" for i, r in enumerate(rewards)]
    fig = go.Figure([go.Bar(x=x, y=list(values), name=name, marker_color=color(k))
                     for k, (name, values) in enumerate(advantages.items())])
    fig.update_layout(barmode="group", template="plotly_white", title=title, yaxis_title="advantage A_i",
                      margin=dict(l=50, r=20, t=50, b=40), height=360)
    return fig


def aggregation_weights(weights: Mapping[str, Sequence[float]], lengths: Sequence[int],
                        title: str = "gradient weight per token by aggregation mode") -> go.Figure:
    """Bars: for each response (labelled by length), the weight ∂L/∂(A·ℓ_t) of each of its tokens."""
    x = [f"y{i} (|y|={n})" for i, n in enumerate(lengths)]
    fig = go.Figure([go.Bar(x=x, y=list(w), name=name, marker_color=color(k))
                     for k, (name, w) in enumerate(weights.items())])
    fig.update_layout(barmode="group", template="plotly_white", title=title, yaxis_title="weight per token",
                      margin=dict(l=50, r=20, t=50, b=40), height=360)
    return fig
