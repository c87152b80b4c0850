"""Figures of the preference lessons.

- :func:`reward_shape_figure`: AlphaPO's reward r_α(S̄) = β(1 − e^{−αS̄})/α against the
  length-normalized log-prob S̄, beside SimPO's log reward (α = 0), and its gradient weight π̄^{−α}.
- :func:`logprob_figure`: chosen and rejected log-probs over training (displacement: the chosen
  curve falls while the margin grows), with the margin on a second panel.
- :func:`ranking_figure`: ranking accuracy over training against the idealized ranking accuracy
  and the reference's.
- :func:`training_figure`: the three above as one grid (the CLI's plot of ``preference_training``).
- :func:`lesson_figures`: the notebook panel's list of figures for one run.
"""
from __future__ import annotations

from typing import Mapping

import plotly.graph_objects as go
import torch
from lab.history import History, Runs
from lab.preference.core import alpha_reward
from lab.viz.figures import _as_runs, color, dash_legend, label, make_subplots


def reward_shape_figure(alpha: float = 0.25, beta: float = 2.5, gamma: float = 0.1,
                        alphas: tuple[float, ...] = (-1.0, 0.0, 1.0)) -> go.Figure:
    """r_α(S̄)/β for the chosen α and a few others (left) and the gradient weight π̄^{−α} (right)."""
    s = torch.linspace(-4.0, 0.0, 200, dtype=torch.float64)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("reward r(S̄) = β·u_α(S̄)", "gradient weight dr/dS̄ / β = π̄^(−α)"))
    shown = list(dict.fromkeys([float(alpha), *alphas]))
    for i, a in enumerate(shown):
        label = f"α = {a:g}" + (" (SimPO: log)" if a == 0 else "") + (" ◀" if a == float(alpha) else "")
        width = 3 if a == float(alpha) else 1.5
        fig.add_trace(go.Scatter(x=s.numpy(), y=beta * alpha_reward(s, a).numpy(), name=label, legendgroup=label,
                                 line=dict(color=color(i), width=width)), row=1, col=1)
        fig.add_trace(go.Scatter(x=s.numpy(), y=torch.exp(-a * s).numpy(), name=label, legendgroup=label, showlegend=False,
                                 line=dict(color=color(i), width=width)), row=1, col=2)
    fig.update_xaxes(title_text="S̄ = mean token log-prob")
    fig.update_yaxes(title_text="reward r", row=1, col=1)
    fig.update_yaxes(type="log", title_text="π̄^(−α)", row=1, col=2)
    fig.update_layout(height=340, margin=dict(l=60, r=20, t=60, b=40),
                      title=f"reward shape (β = {beta:g}; a pair needs r_w − r_l > γ = {gamma:g})")
    return fig


def logprob_figure(runs: History | Mapping[str, History]) -> go.Figure:
    """Chosen (solid) and rejected (dashed) mean log-probs over training; margin S_w − S_l below."""
    runs: Runs = _as_runs(runs)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    for i, (label, h) in enumerate(runs.items()):
        steps = h.steps
        fig.add_trace(go.Scatter(x=steps, y=h["chosen_logps"], name=label, legendgroup=label,
                                 line=dict(color=color(i))), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=h["rejected_logps"], name=label, legendgroup=label, showlegend=False,
                                 line=dict(color=color(i), dash="dash")), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=h["margin"], name=label, legendgroup=label, showlegend=False,
                                 line=dict(color=color(i))), row=2, col=1)
        if h["displacement"][-1] < 0:
            fig.add_annotation(x=steps[-1], y=h["chosen_logps"][-1], text="displacement", showarrow=True,
                               row=1, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_yaxes(title_text="mean log-prob", row=1, col=1)
    fig.update_yaxes(title_text="margin S_w − S_l", row=2, col=1)
    dash_legend(fig, {"solid": "solid: chosen y_w (and the margin)", "dash": "dashed: rejected y_l"})
    fig.update_layout(height=520, margin=dict(l=60, r=20, t=40, b=40))
    return fig


def ranking_figure(runs: History | Mapping[str, History]) -> go.Figure:
    """Ranking accuracy (solid) vs the idealized value (dotted) and the reference's (dashed)."""
    runs = _as_runs(runs)
    fig = go.Figure()
    for i, (label, h) in enumerate(runs.items()):
        for metric, dash, name in (("ranking_accuracy", "solid", "ranking accuracy"),
                                   ("idealized_ranking_accuracy", "dot", "idealized"),
                                   ("ref_ranking_accuracy", "dash", "reference"),
                                   ("ranking_accuracy_ref_wrong", "dashdot", "pairs the reference misranks")):
            fig.add_trace(go.Scatter(x=h.steps, y=h[metric], name=f"{label}: {name}", legendgroup=label,
                                     line=dict(color=color(i), dash=dash)))
    fig.update_layout(height=340, yaxis=dict(range=[0, 1.05], title="share of pairs"),
                      xaxis_title="step", title="ranking accuracy: 1[log π(y_w) > log π(y_l)]",
                      margin=dict(l=50, r=20, t=60, b=40))
    return fig


def training_figure(history: History) -> go.Figure:
    """Log-probs, margin, reward margin and ranking accuracy of one run in a 2×2 grid."""
    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, horizontal_spacing=0.12, vertical_spacing=0.06)
    steps = history.steps
    for (r, c), metric, dash in (((1, 1), "chosen_logps", "solid"), ((1, 1), "rejected_logps", "dash"),
                                 ((1, 2), "margin", "solid"), ((2, 1), "reward_margin", "solid"),
                                 ((2, 2), "ranking_accuracy", "solid"),
                                 ((2, 2), "idealized_ranking_accuracy", "dot")):
        fig.add_trace(go.Scatter(x=steps, y=history[metric], name=label(metric), line=dict(dash=dash)), row=r, col=c)
    for (r, c), name in {(1, 1): "log-prob", (1, 2): "margin S_w − S_l", (2, 1): "implicit reward margin",
                         (2, 2): "ranking accuracy"}.items():
        fig.update_yaxes(title_text=name, row=r, col=c)
    fig.update_xaxes(title_text="step", row=2)
    fig.update_layout(height=520, margin=dict(l=60, r=20, t=40, b=40))
    return fig


def lesson_figures(history: History) -> list[go.Figure]:
    """The notebook's figures: reward shape of the run's hyperparameters, log-probs, ranking."""
    hp = history.meta.get("loss_hparams", {})
    alpha = hp.get("alpha")
    shape = reward_shape_figure(alpha=0.0 if alpha is None else alpha, beta=hp.get("beta") or 1.0,
                                gamma=hp.get("gamma") or 0.0)
    return [shape, logprob_figure(history), ranking_figure(history)]


def sft_figure(runs: Mapping[str, History]) -> go.Figure:
    """Data NLL, KL(π‖π_ref) and true reward of several SFT runs (divergences, learning rates)."""
    from lab.viz.figures import curves

    return curves(runs, ["nll", "kl", "reward"])


__all__ = ["reward_shape_figure", "logprob_figure", "ranking_figure", "training_figure", "lesson_figures",
           "sft_figure"]
