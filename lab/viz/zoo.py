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
from lab.viz.figures import _axis_suffix, _grid_layout, _with_grid, _themed
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
    G = art["group_size"]
    # group separators: the shapes fig.add_vline draws (a line over the y domain), written directly
    separators = [dict(type="line", x0=k * G - 0.5, x1=k * G - 0.5, xref="x", y0=0, y1=1, yref="y domain",
                       line=dict(color="black", width=2)) for k in range(1, len(art["groups"]))]
    skipped = art.get("skipped") or {}
    note = f"<br><sup>not computable here: {', '.join(skipped)}</sup>" if skipped else ""
    layout = dict(title=dict(text=f"advantage of each response under every estimator{note}"),
                  height=140 + 28 * len(names), margin=dict(l=130, r=20, t=70, b=110),
                  xaxis=dict(title=dict(text="response (reward, length)"), tickangle=-40),
                  yaxis=dict(title=dict(text="estimator"), autorange="reversed"))
    if separators:
        layout["shapes"] = separators
    return go.Figure(go.Heatmap(z=z, x=art["labels"], y=names, colorscale="RdBu", zmid=0.0,
                                text=np.round(z, 2), texttemplate="%{text}", colorbar=dict(title="A")),
                     layout=layout)


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
    # one layout dict and trace dicts, validated once: the figure make_subplots + add_trace(row=,
    # col=) + update_*axes(row=, col=) gives, at a fraction of the cost
    layout, grid, grid_str = _grid_layout(3, 2, shared_xaxes=False, shared_yaxes=False,
                                          subplot_titles=[p[1] for p in TOKEN_PANELS],
                                          horizontal_spacing=0.04, vertical_spacing=0.1)
    traces = []
    for k, (key, _, scale, mid) in enumerate(TOKEN_PANELS):
        suffix = _axis_suffix(k // 2 + 1, k % 2 + 1, 2)
        z = np.array([[np.nan if v is None else v for v in row] for row in art[key]], dtype=float)
        text = [[tok if v is not None else "" for tok, v in zip(trow, row)] for trow, row in zip(tokens, art[key])]
        trace = dict(type="heatmap", z=z, y=labels, colorscale=scale, text=text,
                     texttemplate="%{text}", showscale=False,
                     hovertemplate="%{y}<br>pos %{x}: %{text}<br>value %{z:.3f}<extra></extra>",
                     xaxis=f"x{suffix}", yaxis=f"y{suffix}")
        if mid is not None:
            trace["zmid"] = mid
        traces.append(trace)
        layout[f"yaxis{suffix}"].update(autorange="reversed", showticklabels=k % 2 == 0, tickfont=dict(size=9))
        if k % 2 == 0:
            layout[f"yaxis{suffix}"]["title"] = dict(text="response")
        layout[f"xaxis{suffix}"]["title"] = dict(text="token position")
    layout.update(height=280 * 3 + 60, title=dict(text="what each method does to each token of one sampled batch"),
                  margin=dict(l=170, r=20, t=80, b=30))
    return _with_grid(_themed(go.Figure(data=traces, layout=layout)), grid, grid_str)


__all__ = ["HEAD_TO_HEAD_PANELS", "TOKEN_PANELS", "advantage_zoo_figure", "head_to_head_figure",
           "token_view_figure"]
