"""Figures of the Local SGD / EDiT / A-EDiT experiments: loss against communication rounds and
against simulated wall-clock time, and the pseudo-gradient norms EDiT's penalty acts on."""
from __future__ import annotations

from typing import Mapping

import plotly.graph_objects as go
from lab.history import History
from lab.viz.figures import Grid, color, make_subplots, _themed


def distributed_figure(runs: History | Mapping[str, History]) -> go.Figure:
    """Three panels: loss vs communication round (log y), loss vs wall-clock, mean ||Delta_k||."""
    if isinstance(runs, History):
        runs = {str(runs.meta.get("algorithm", "run")): runs}
    grid = Grid(rows=1, cols=3, horizontal_spacing=0.09,
                subplot_titles=("loss vs communication rounds", "loss vs wall-clock (s)",
                                "mean pseudo-gradient norm"))
    optimum = None
    for i, (label, h) in enumerate(runs.items()):
        style = dict(color=color(i))
        grid.add(dict(type="scatter", x=h.steps, y=h["loss"], name=label, legendgroup=label, line=style), 1, 1)
        grid.add(dict(type="scatter", x=h["wall_clock"], y=h["loss"], name=label, legendgroup=label,
                      showlegend=False, line=style), 1, 2)
        steps, norms = h.series("pseudo_grad_norm")
        grid.add(dict(type="scatter", x=steps, y=norms, name=label, legendgroup=label, showlegend=False,
                      line=style), 1, 3)
        if "flagged" in h:
            flag_steps, flagged = h.series("flagged")
            hit = flagged > 0
            grid.add(dict(type="scatter", x=flag_steps[hit], y=norms[hit], mode="markers", name=f"{label}: flagged",
                          legendgroup=label, marker=dict(color=color(i), symbol="x", size=9)), 1, 3)
        optimum = h.artifacts.get("optimum_loss", optimum)
    shapes = []
    if optimum is not None:                         # the lines fig.add_hline(row=1, col=c) draws
        shapes = [dict(type="line", x0=0, x1=1, xref=f"x{s} domain", y0=optimum, y1=optimum, yref=f"y{s}",
                       line=dict(dash="dot", color="gray")) for s in ("", "2")]
    grid.yaxis(1, 1, type="log", title="loss")
    grid.yaxis(1, 2, type="log", title="loss")
    grid.xaxis(1, 1, title="round")
    grid.xaxis(1, 2, title="seconds")
    grid.xaxis(1, 3, title="round")
    grid.yaxis(1, 3, title="‖Δ_k‖")
    return grid.figure(height=360, margin=dict(l=60, r=20, t=50, b=40), **({"shapes": shapes} if shapes else {}))


def real_vs_simulated_figure(runs: Mapping[str, History]) -> go.Figure:
    """Loss per communication round: the simulation (lines) and the real processes (markers) of
    each algorithm in one colour; they lie on top of each other when the two runs agree."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss vs communication rounds",
                                                        "|real - simulated| loss per round"))
    algorithms = []
    for label in runs:
        alg = label.split(": ", 1)[-1]
        if alg not in algorithms:
            algorithms.append(alg)
    for i, alg in enumerate(algorithms):
        sim = next(h for k, h in runs.items() if k == f"simulated: {alg}")
        real = next(h for k, h in runs.items() if k.endswith(f": {alg}") and not k.startswith("simulated"))
        real_label = next(k for k in runs if k.endswith(f": {alg}") and not k.startswith("simulated"))
        fig.add_trace(go.Scatter(x=sim.steps, y=sim["loss"], name=f"simulated: {alg}", legendgroup=alg,
                                 line=dict(color=color(i))), 1, 1)
        fig.add_trace(go.Scatter(x=real.steps, y=real["loss"], name=real_label, legendgroup=alg, mode="markers",
                                 marker=dict(color=color(i), symbol="circle-open", size=9)), 1, 1)
        gap = abs(real["loss"] - sim["loss"][:len(real["loss"])])
        fig.add_trace(go.Scatter(x=real.steps, y=gap + 1e-12, name=f"gap: {alg}", legendgroup=alg, showlegend=False,
                                 line=dict(color=color(i))), 1, 2)
    fig.update_yaxes(type="log", title_text="global loss", row=1, col=1)
    fig.update_yaxes(type="log", exponentformat="e", title_text="absolute difference", row=1, col=2)
    fig.update_xaxes(title_text="communication round", row=1, col=1)
    fig.update_xaxes(title_text="communication round", row=1, col=2)
    _themed(fig).update_layout(height=380, margin=dict(l=50, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.25))
    return fig
