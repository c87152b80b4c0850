"""Figures of the curricula lesson: what a sampler feeds GRPO, and what VAS does to a frozen policy.

- :func:`curriculum_figure`: for one run or several (a sampler against uniform sampling): greedy
  accuracy on the pool, against steps and against rollouts spent; the share of zero-variance groups;
  the sampling weight of each source over training; the accuracy of each source.
- :func:`vas_figure`: the value model's regression loss, and the reward of the frozen policy's
  samples against the guidance strength β (β = 0 is the policy itself).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from lab.history import History
from lab.viz.figures import _as_runs, color, make_subplots

DASHES = ("solid", "dash", "dot", "dashdot")


def _source_labels(history: History, n: int) -> list[str]:
    sources = history.meta.get("sources") or []
    return [str(s) for s in sources] if len(sources) == n else [f"source {j}" for j in range(n)]


def curriculum_figure(runs: History | Mapping[str, History], height: int = 760) -> go.Figure:
    """A 3×2 grid of curriculum curves; one color per run, per-source panels one color per source
    and one dash style per run."""
    runs = _as_runs(runs)
    fig = make_subplots(rows=3, cols=2, horizontal_spacing=0.12, vertical_spacing=0.16,
                        subplot_titles=("greedy accuracy on the pool", "accuracy vs rollouts spent",
                                        "share of zero-variance groups", "training reward",
                                        "sampling weight per source", "greedy accuracy per source"))
    for i, (label, h) in enumerate(runs.items()):
        line = dict(color=color(i))
        if "eval_accuracy" in h:
            steps, acc = h.series("eval_accuracy")
            fig.add_trace(go.Scatter(x=steps, y=acc, mode="lines+markers", name=label, legendgroup=label,
                                     line=line), row=1, col=1)
            spent = dict(zip(*h.series("rollouts")))
            fig.add_trace(go.Scatter(x=[spent.get(s, np.nan) for s in steps], y=acc, mode="lines+markers",
                                     name=label, legendgroup=label, showlegend=False, line=line),
                          row=1, col=2)
        for key, r, c in (("frac_zero_std_groups", 2, 1), ("reward", 2, 2)):
            if key in h:
                steps, values = h.series(key)
                fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=label, legendgroup=label,
                                         showlegend=False, line=line), row=r, col=c)
        dash = DASHES[i % len(DASHES)]
        for key, col in (("dump_weights" if "dump_weights" in h else "weights", 1), ("source_accuracy", 2)):
            if key not in h:
                continue
            steps, values = h.series(key)
            values = np.asarray(values, dtype=float)
            for j, name in enumerate(_source_labels(h, values.shape[1])):
                fig.add_trace(go.Scatter(x=steps, y=values[:, j], mode="lines", name=f"{name} ({label})",
                                         legendgroup=f"{label}-{j}", showlegend=col == 1,
                                         line=dict(color=color(j + 3), dash=dash)), row=3, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_xaxes(title_text="responses generated", row=1, col=2)
    for (r, c), name in {(1, 1): "greedy accuracy", (1, 2): "greedy accuracy", (2, 1): "zero-variance share",
                         (2, 2): "reward", (3, 1): "sampling weight", (3, 2): "greedy accuracy"}.items():
        fig.update_yaxes(title_text=name, row=r, col=c)
    fig.update_yaxes(range=[-0.02, 1.02], row=3)
    fig.update_layout(height=height + 60, margin=dict(l=60, r=20, t=50, b=40))
    return fig


def vas_figure(history: History) -> go.Figure:
    """Value loss over regression steps (left); reward and exact accuracy against β (right)."""
    art = history.artifacts
    running = "betas" not in art and "value_loss" in history      # a live panel streams the fit
    if "betas" not in art and not running:
        raise ValueError("history has no VAS evaluation (run value_augmented_sampling)")
    right = ("frozen π₀ decoded with VAS (appears when the run ends)" if running else
             f"frozen π₀ decoded with VAS (weights changed by {art['base_weight_change']:.1g})")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("value-model loss on π₀'s samples", right))
    if "value_loss" in history:
        steps, loss = history.series("value_loss")
        fig.add_trace(go.Scatter(x=steps, y=loss, mode="lines", name="value loss",
                                 line=dict(color=color(0))), row=1, col=1)
    if not running:
        fig.add_trace(go.Scatter(x=art["betas"], y=art["reward"], mode="lines+markers", name="reward",
                                 line=dict(color=color(1))), row=1, col=2)
        fig.add_trace(go.Scatter(x=art["betas"], y=art["accuracy"], mode="lines+markers", name="exact accuracy",
                                 line=dict(color=color(2), dash="dash")), row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="β (0 = the frozen policy)", row=1, col=2)
    fig.update_yaxes(title_text="value loss", row=1, col=1)
    fig.update_yaxes(title_text="reward / exact accuracy", row=1, col=2)
    fig.update_layout(height=380, margin=dict(l=60, r=20, t=50, b=40))
    return fig


__all__ = ["curriculum_figure", "vas_figure"]
