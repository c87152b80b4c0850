"""Figures of the multi-objective lesson: fronts, hypervolume, weights and multipliers, proxy vs true.

- :func:`training_figure`: one run or several (``Runs``): each objective over training, the
  hypervolume of the greedy points seen so far, the weights (or Lagrange multipliers), and, on the
  proxy task, the proxy reward against the hidden true reward.
- :func:`pareto_figure`: the greedy objective points of runs in objective space (first two
  objectives), each run's Pareto front, and the task's deterministic front when known.
- :func:`sweep_figure`: the final points of a weight sweep per method (``pareto_sweep`` results,
  or the sweeps' Histories of the points finished so far) with each method's hypervolume in the legend.
"""
from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go
from lab.history import History
from lab.viz.figures import _as_runs, color, dash_legend, make_subplots

DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def training_figure(runs: History | Mapping[str, History], height: int = 720) -> go.Figure:
    """A 2×2 grid: objectives, hypervolume, weights/multipliers, proxy vs true reward."""
    runs = _as_runs(runs)
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.12, vertical_spacing=0.16,
                        subplot_titles=("objectives (batch mean; dash = objective index)",
                                        "hypervolume of the greedy front so far",
                                        "weights (solid) / Lagrange multipliers λ (dot)",
                                        "proxy (solid) vs hidden true reward (dash)"))
    for i, (label, h) in enumerate(runs.items()):
        names = h.meta.get("objectives") or []
        for k, name in enumerate(names):
            if f"obj/{name}" in h:
                steps, values = h.series(f"obj/{name}")
                fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=f"{label}: {name}",
                                         legendgroup=label, line=dict(color=color(i), dash=DASHES[k % 5])),
                              row=1, col=1)
        if "hypervolume" in h:
            steps, hv = h.series("hypervolume")
            fig.add_trace(go.Scatter(x=steps, y=hv, mode="lines", name=f"{label}: HV", legendgroup=label,
                                     showlegend=False, line=dict(color=color(i))), row=1, col=2)
        for key, dash in (("weights", None), ("lambda", "dot")):
            if key not in h:
                continue
            steps, values = h.series(key)
            for k in range(values.shape[1]):
                name = names[k] if k < len(names) else str(k)
                fig.add_trace(go.Scatter(x=steps, y=values[:, k], mode="lines", name=f"{label}: {key} {name}",
                                         legendgroup=label, showlegend=False,
                                         line=dict(color=color(i), dash=dash or DASHES[k % 5])), row=2, col=1)
        if "true_reward" in h:
            steps, proxy = h.series("proxy_reward")
            fig.add_trace(go.Scatter(x=steps, y=proxy, mode="lines", name=f"{label}: proxy", legendgroup=label,
                                     showlegend=False, line=dict(color=color(i))), row=2, col=2)
            steps, true = h.series("true_reward")
            fig.add_trace(go.Scatter(x=steps, y=true, mode="lines", name=f"{label}: true", legendgroup=label,
                                     showlegend=False, line=dict(color=color(i), dash="dash")), row=2, col=2)
    fig.update_xaxes(title_text="step")
    for (r, c), name in {(1, 1): "objective (batch mean)", (1, 2): "hypervolume", (2, 1): "weight / λ",
                         (2, 2): "reward"}.items():
        fig.update_yaxes(title_text=name, row=r, col=c)
    if any("true_reward" in h for h in runs.values()):
        dash_legend(fig, {"solid": "solid: proxy reward", "dash": "dashed: hidden true reward"})
    if any("lambda" in h for h in runs.values()):
        dash_legend(fig, {"dot": "dotted: Lagrange multiplier λ"})
    fig.update_layout(height=height, margin=dict(l=60, r=20, t=60, b=40))
    return fig


def _task_front(fig: go.Figure, front: Any) -> None:
    if front:
        fig.add_trace(go.Scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines+markers",
                                 name="deterministic responses (task front)",
                                 line=dict(color="#999", dash="dot"), marker=dict(symbol="x", size=8)))


def pareto_figure(runs: History | Mapping[str, History], height: int = 460) -> go.Figure:
    """Greedy points of each run in the plane of the first two objectives, with its Pareto front."""
    runs = _as_runs(runs)
    fig = go.Figure()
    names = ["objective 0", "objective 1"]
    task_front = None
    for i, (label, h) in enumerate(runs.items()):
        names = (h.meta.get("objectives") or names)[:2]
        points, front = h.artifacts.get("points", []), h.artifacts.get("front", [])
        task_front = task_front or h.artifacts.get("task_front")
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers",
                                 name=f"{label}: greedy points", legendgroup=label, opacity=0.35,
                                 marker=dict(color=color(i), size=6)))
        fig.add_trace(go.Scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines+markers",
                                 name=f"{label}: front (HV {h['hypervolume'][-1]:.3f})" if "hypervolume" in h
                                 else f"{label}: front", legendgroup=label, line=dict(color=color(i), shape="hv")))
    _task_front(fig, task_front)
    fig.update_layout(height=height, xaxis_title=names[0], yaxis_title=names[1],
                      title="Greedy points over training and their Pareto front", margin=dict(l=50, r=20, t=60, b=40))
    return fig


def sweep_figure(results: Mapping[str, Mapping[str, Any] | History], task_front: Any = None,
                 height: int = 460) -> go.Figure:
    """Final points of a weight sweep per method (``pareto_sweep`` results), HV in the legend.

    A value may also be a sweep's History (the runs finished so far, as a live panel streams it):
    one row per finished run with its final ``point``, initial ``weights`` and the ``hypervolume``
    of the points so far (:func:`lab.experiments.multi_objective.pareto_sweep`).
    """
    fig = go.Figure()
    for i, (label, res) in enumerate(results.items()):
        if isinstance(res, History):
            res = {"points": res["point"].tolist(), "weights": res["weights"].tolist(),
                   "hypervolume": float(res["hypervolume"][-1])}
        pts, weights = res["points"], res.get("weights", [])
        text = [f"w = {tuple(round(x, 2) for x in w)}" for w in weights] if weights else None
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", text=text,
                                 name=f"{label} (HV {res['hypervolume']:.3f})", marker=dict(color=color(i), size=11,
                                                                                           symbol=i)))
    _task_front(fig, task_front)
    fig.update_layout(height=height, xaxis_title="objective 0", yaxis_title="objective 1",
                      title="Final greedy points of a weight sweep", margin=dict(l=50, r=20, t=60, b=40))
    return fig


__all__ = ["training_figure", "pareto_figure", "sweep_figure"]
