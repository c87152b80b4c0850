"""Figures for SPO, EGAE/T-PPO, HPT, PSR/NSR, COPO and GRPO-D.

- :func:`segment_figure`: SPO's advantage variance and MC cost against the cut interval, the
  per-token advantages at the finest and coarsest interval, and tree vs chain tokens.
- :func:`truncation_figure`: EGAE and the naive terminal cut against full-episode GAE, per window.
- :func:`kl_schedule_figure`: GRPO-D's β(s).
- :func:`sign_figure`: PSR vs NSR (and other modes): entropy over training and the distinct
  correct answers left in the last batch.

The live panels of these views are built by :func:`lab.viz.lessons.segment_panel`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from lab.history import History
from lab.viz.figures import _as_runs, _themed, bar, color, curves, heatmap, make_subplots, pending

SIGN_MODES = ("psr", "nsr", "w_reinforce", "grpo_n")


def segment_figure(history: History) -> list[go.Figure]:
    """SPO: variance/cost vs interval, per-token advantages (finest, coarsest), tree vs chain."""
    k = history.steps
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14,
                        subplot_titles=("advantage variance across re-estimates", "MC samples per state"))
    fig.add_trace(go.Scatter(x=k, y=history["adv_var"], mode="lines+markers", name="Var(Â)",
                             line=dict(color=color(0))), row=1, col=1)
    fig.add_trace(go.Bar(x=k, y=history["samples_per_state"], name="samples / state",
                         marker_color=color(1)), row=1, col=2)
    fig.update_xaxes(title_text="cut interval (1 = token-level MC)")
    fig.update_yaxes(title_text="Var(Â)", row=1, col=1)
    fig.update_yaxes(title_text="samples per state", row=1, col=2)
    fig.update_layout(height=320, margin=dict(l=60, r=20, t=50, b=40))
    figs = [fig]
    examples = history.artifacts.get("advantages", {})
    texts = history.artifacts.get("texts")
    for key in (list(examples)[:1] + list(examples)[-1:]) if examples else []:
        figs.append(heatmap(examples[key], y=texts, title=f"segment advantages, interval {key}",
                            x_title="token", y_title="response"))
    tree = history.artifacts.get("tree")
    if tree is not None:
        chain = history.artifacts["chain_response_tokens"] + float(history["mc_tokens_per_response"][-1])
        figs.append(bar({"chain (response + MC)": chain, "tree (shared prefixes)": tree["tokens_per_leaf"]},
                        title="generated tokens per trajectory", y_title="tokens", x_title="rollout scheme"))
    return figs


def truncation_figure(history: History) -> go.Figure:
    """Mean |Â − Â_full| over the window's tokens: EGAE vs the naive terminal cut."""
    fig = curves(history, ["egae_error", "naive_error", "finished_frac"])
    fig.update_xaxes(title_text="window w (tokens generated)")
    return fig


def kl_schedule_figure(total_steps: int = 100, beta_min: float = 0.0, beta_max: float = 0.02,
                       warm_frac: float = 0.3) -> go.Figure:
    """β(s) of GRPO-D over a run."""
    from lab.rl.grpo_d import kl_schedule

    s = np.arange(total_steps + 1)
    beta = [kl_schedule(int(x), total_steps, beta_min=beta_min, beta_max=beta_max, warm_frac=warm_frac)
            for x in s]
    fig = go.Figure(go.Scatter(x=s, y=beta, mode="lines", line=dict(color=color(0)), name="β(s)"))
    fig.update_layout(title="GRPO-D KL coefficient", xaxis_title="step",
                      yaxis_title="β", height=300, margin=dict(l=50, r=20, t=50, b=40))
    return fig


def sign_figure(runs: Mapping[str, History]) -> list[go.Figure]:
    """Entropy and reward per mode; the effective number of correct answers in each run's last
    batch (exp of the entropy of their frequencies: ``artifacts["effective_correct"]``, written by
    ``sign_runs``), which falls to 1 as a mode collapses onto one answer."""
    runs = _as_runs(runs)
    title = "effective number of correct answers in the last batch"
    done = {label: h.artifacts["effective_correct"] for label, h in runs.items() if "effective_correct" in h.artifacts}
    if not done:                                     # written when the runs end (a live panel streams)
        return [curves(runs, ["reward", "entropy"]), pending(title, "the effective number of correct answers")]
    return [curves(runs, ["reward", "entropy"]), bar(done, title=title, y_title="exp(H)")]


def copo_figure(runs: Mapping[str, History]) -> list[go.Figure]:
    """GRPO vs COPO: reward and entropy, and the share of responses each leaves without a learning
    signal (GRPO's ``adv_zero_frac``, COPO's ``copo/no_signal_frac``)."""
    runs = _as_runs(runs)
    fig = go.Figure()
    for i, (label, key) in enumerate((("grpo", "adv_zero_frac"), ("copo", "copo/no_signal_frac"))):
        if label in runs and key in runs[label]:     # a streaming panel: COPO runs second
            steps, values = runs[label].series(key)
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=f"{label}: {key}",
                                     line=dict(color=color(i))))
    _themed(fig).update_layout(title="responses without a learning signal",
                      xaxis_title="step", yaxis_title="share", height=300, margin=dict(l=50, r=20, t=50, b=40))
    return [curves(runs, ["reward", "entropy"]), fig]


def grpo_d_plot(history: History) -> list[go.Figure]:
    """GRPO-D's reward and KL over training, beside the β it used at each step (``grpo_d/beta``)."""
    fig = curves(history, ["grpo_d/beta"], title="β(s) used at each step")
    return [curves(history, ["reward", "kl"]), fig]


__all__ = ["SIGN_MODES", "segment_figure", "truncation_figure", "kl_schedule_figure", "sign_figure",
           "copo_figure", "grpo_d_plot"]
