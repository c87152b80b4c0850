"""Figures of the flow lessons: sample scatters before/after, reward and divergence curves,
the loss of pretraining, guided vs conditional samples."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from lab.history import History
from lab.viz.figures import color, pending


def samples_figure(sets: dict[str, list], *, center: list | None = None, title: str | None = None,
                   radius: float | None = None) -> go.Figure:
    """Scatter of named 2-D point sets; ``center`` marks the rewarded / conditioned mode."""
    fig = go.Figure()
    for i, (name, points) in enumerate(sets.items()):
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        fig.add_trace(go.Scatter(x=pts[:, 0], y=pts[:, 1], mode="markers", name=name,
                                 marker=dict(size=4, opacity=0.5, color=color(i))))
    if center is not None:
        fig.add_trace(go.Scatter(x=[center[0]], y=[center[1]], mode="markers", name="target",
                                 marker=dict(symbol="x", size=14, color="black")))
    if radius is not None:
        angle = np.linspace(0, 2 * np.pi, 100)
        fig.add_trace(go.Scatter(x=radius * np.cos(angle), y=radius * np.sin(angle), mode="lines",
                                 name="modes circle", line=dict(dash="dot", color="grey")))
    fig.update_layout(title=title, xaxis=dict(range=[-8, 8], title="x₁"),
                      yaxis=dict(range=[-8, 8], title="x₂", scaleanchor="x"), height=420, width=560,
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig


def metric_figure(history: History, metrics: list[str], *, title: str | None = None) -> go.Figure:
    """Line plot of the given metrics of one History (those present)."""
    fig = go.Figure()
    for i, key in enumerate(k for k in metrics if k in history):
        steps, values = history.series(key)
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=key,
                                 line=dict(color=color(i)), marker=dict(size=4)))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="value", height=360,
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig


def finetune_figures(history: History) -> list[go.Figure]:
    """Samples before/after fine-tuning, reward curve, divergence and diversity, the clipped fraction."""
    from lab.viz.figures import pending

    art = history.artifacts
    algo = history.meta.get("algorithm", "")
    samples = (samples_figure({"pretrained": art["before"], "fine-tuned": art["after"]}, center=art["center"],
                              title=f"{algo}: samples before / after") if "after" in art
               else pending(f"{algo}: samples before / after", "the fine-tuned samples", height=420))
    return [samples,
            metric_figure(history, ["reward", "ode_reward", "target_frac"], title="reward"),
            metric_figure(history, ["divergence", "kl", "modes"], title="divergence from the pretrained model"),
            metric_figure(history, ["clip_frac"],
                          title=f"clipped fraction of the ratios ({history.meta.get('updates', '?')} updates per rollout; "
                                "the first is on-policy)")]


def pretrain_figures(history: History) -> list[go.Figure]:
    """Learned samples vs data, loss and energy distance."""
    art = history.artifacts
    if "samples" not in art:                         # written at the end of the run (a live panel streams)
        first = pending("learned samples vs data", "the learned samples", height=420)
    else:
        first = samples_figure({"data": art["data"], "model": art["samples"]},
                               title=f"{history.meta.get('algorithm', '')}: straightness {art['straightness']:.3f}")
    return [first, metric_figure(history, ["loss", "energy", "stage"], title="pretraining")]


def guidance_figures(history: History) -> list[go.Figure]:
    """Guided vs conditional samples and the per-step x̂_0 error."""
    art = history.artifacts
    title = (f"{history.meta.get('algorithm', '')}: mean ‖x‖ {art['norm_mean']:.2f} "
             f"(modes at {art['mode_norm']:.1f}: ×{art['norm_ratio']:.2f}), on its mode {art['on_mode']:.0%}")
    return [samples_figure({"conditional (w = 1)": art["conditional"], "guided": art["samples"]},
                           center=art["center"], radius=art["mode_norm"], title=title),
            metric_figure(history, ["error"], title=f"x̂₀ jump per step, DiffIER's proxy (total {art['accumulated_error']:.3g})")]


__all__ = ["samples_figure", "metric_figure", "finetune_figures", "pretrain_figures", "guidance_figures"]
