"""Figures of the group-relative zoo (notebook 07).

- :func:`advantage_zoo_figure`: every estimator's advantage of every response (a heatmap with the
  numbers written in), for one group plus an all-correct and an all-wrong group.
- :func:`head_to_head_figure`: reward / accuracy, entropy, clip fractions (low solid, high dashed)
  and response length of several methods trained on the same task and seed.
- :func:`token_view_figure`: per token of a sampled batch, what each method does: STEER's weight,
  GTPO's conflict multiplier, HAPO's clip bounds and temperature, D³S's kept tokens.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from lab.history import History
from lab.viz.figures import make_subplots
from lab.viz.rl import training_figure

HEAD_TO_HEAD_PANELS = (("reward", "accuracy"), ("entropy",), ("clip_frac_low", "clip_frac_high"),
                       ("response_length",))

TOKEN_PANELS = (
    ("steer_weight", "STEER weight w (low = large entropy change)", "RdBu", 1.0),
    ("gtpo_lambda", "GTPO λ (0 = negative update skipped, ≥2 = amplified)", "RdBu", 1.0),
    ("hapo_eps_low", "HAPO ε_low,t (wider below for confident tokens)", "Blues", None),
    ("hapo_eps_high", "HAPO ε_high,t (wider above for uncertain tokens)", "Reds", None),
    ("hapo_temperature", "HAPO adaptive temperature T_t", "RdBu_r", 1.0),
    ("d3s_keep", "D³S: tokens kept (top |A|·H of max-Var(A) rows)", "Greens", None),
)


def advantage_zoo_figure(history: History) -> go.Figure:
    """Heatmap: rows = estimators, columns = responses; cells show A_i (mean over its tokens)."""
    art = history.artifacts
    table: Mapping[str, list[float]] = art["advantages"]
    names = list(table)
    z = np.array([table[n] for n in names], dtype=float)
    fig = go.Figure(go.Heatmap(z=z, x=art["labels"], y=names, colorscale="RdBu", zmid=0.0,
                               text=np.round(z, 2), texttemplate="%{text}", colorbar=dict(title="A")))
    fig.update_xaxes(title_text="response (reward, length)")
    fig.update_yaxes(title_text="estimator")
    G = art["group_size"]
    for k in range(1, len(art["groups"])):
        fig.add_vline(x=k * G - 0.5, line=dict(color="black", width=2))
    skipped = art.get("skipped") or {}
    note = f"<br><sup>not computable here: {', '.join(skipped)}</sup>" if skipped else ""
    fig.update_layout(title=f"advantage of each response under every estimator{note}",
                      height=140 + 28 * len(names),
                      margin=dict(l=130, r=20, t=70, b=110))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-40)
    return fig


def head_to_head_figure(runs: Mapping[str, History]) -> go.Figure:
    """Training curves of several methods (same task and seed)."""
    fig = training_figure(runs, panels=HEAD_TO_HEAD_PANELS, height=600)
    fig.update_layout(title="same task, same seed: reward (accuracy dashed), entropy, "
                            "clip fraction low (high dashed), response length")
    return fig


def token_view_figure(history: History) -> go.Figure:
    """A grid of per-token heatmaps (rows = responses, columns = positions, cells = tokens)."""
    art = history.artifacts
    tokens = art["tokens"]
    G = len(tokens) // max(len(art["prompts"]), 1)
    labels = [f"{i}: {art['prompts'][i // G]}→ R={r:.2f} A={a:+.2f}"                # unique rows
              for i, (r, a) in enumerate(zip(art["rewards"], art["advantages"]))]
    fig = make_subplots(rows=3, cols=2, subplot_titles=[p[1] for p in TOKEN_PANELS],
                        horizontal_spacing=0.04, vertical_spacing=0.1)
    for k, (key, _, scale, mid) in enumerate(TOKEN_PANELS):
        z = np.array([[np.nan if v is None else v for v in row] for row in art[key]], dtype=float)
        text = [[tok if v is not None else "" for tok, v in zip(trow, row)] for trow, row in zip(tokens, art[key])]
        fig.add_trace(go.Heatmap(z=z, y=labels, colorscale=scale, zmid=mid, text=text,
                                 texttemplate="%{text}", showscale=False,
                                 hovertemplate="%{y}<br>pos %{x}: %{text}<br>value %{z:.3f}<extra></extra>"),
                      row=k // 2 + 1, col=k % 2 + 1)
        fig.update_yaxes(autorange="reversed", row=k // 2 + 1, col=k % 2 + 1,
                         showticklabels=k % 2 == 0, tickfont=dict(size=9),
                         title_text="response" if k % 2 == 0 else None)
        fig.update_xaxes(title_text="token position", row=k // 2 + 1, col=k % 2 + 1)
    fig.update_layout(height=280 * 3 + 60,
                      title="what each method does to each token of one sampled batch",
                      margin=dict(l=170, r=20, t=80, b=30))
    return fig


__all__ = ["HEAD_TO_HEAD_PANELS", "TOKEN_PANELS", "advantage_zoo_figure", "head_to_head_figure",
           "token_view_figure"]
