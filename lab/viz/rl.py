"""Figures of the RL lessons: training curves, per-token advantages, the advantage calculator.

- :func:`training_figure`: reward / accuracy, entropy, clip fraction and KL against step.
- :func:`advantage_heatmap`: the per-token advantages of a sampled batch (rows = responses).
- :func:`advantage_bars`: each estimator's advantages for one group of rewards, side by side.
- :func:`aggregation_weights`: the gradient weight per token each aggregation mode gives to
  responses of different lengths.
- :func:`advantage_calculator` (+ :class:`CalculatorConfig`, :func:`calculator_figures`): the
  notebook's calculator, one group of rewards in, advantages and aggregation weights out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from lab.history import History, Runs
from lab.viz.figures import (_as_runs, _axis_suffix, _grid_layout, _with_grid, color,
                             dash_legend_traces, grouped_bars, heatmap, label, pending, _themed)

PANELS = (("reward", "accuracy"), ("entropy",), ("clip_frac",), ("kl",))
AGG_NAMES = {
    "token_mean": "token_mean: 1/Σ|y| (DAPO, PPO)",
    "seq_mean_token_mean": "seq_mean_token_mean: 1/(G·|y_i|) (GRPO, GSPO)",
    "seq_mean_token_sum": "seq_mean_token_sum: 1/G (REINFORCE)",
    "seq_mean_token_sum_norm": "seq_mean_token_sum_norm: 1/(G·C) (Dr. GRPO)",
}
"""Legend names of the aggregation modes: the weight per token and the methods that use each."""


def training_figure(runs: History | Mapping[str, History], panels: Sequence[Sequence[str]] = PANELS,
                    height: int = 520) -> go.Figure:
    """A 2×2 grid of curves (reward and accuracy share a panel, dashed accuracy)."""
    runs: Runs = _as_runs(runs)
    rows = (len(panels) + 1) // 2
    # written as one layout dict and trace dicts, validated once: the figure make_subplots +
    # add_trace(row=, col=) + update_*axes(row=, col=) gives, at a tenth of the cost
    layout, grid, grid_str = _grid_layout(rows, 2, shared_xaxes=True, shared_yaxes=False,
                                          horizontal_spacing=0.12, vertical_spacing=0.06, subplot_titles=None)
    traces = []
    for i, (name, h) in enumerate(runs.items()):
        for k, metrics in enumerate(panels):
            suffix = _axis_suffix(k // 2 + 1, k % 2 + 1, 2)
            for j, metric in enumerate(metrics):
                if metric not in h:
                    continue
                steps, values = h.series(metric)
                traces.append(dict(type="scatter", x=steps, y=values, mode="lines", name=name, legendgroup=name,
                                   showlegend=k == 0 and j == 0,
                                   line=dict(color=color(i), dash="dash" if j else "solid"),
                                   hovertemplate=f"{metric}: %{{y:.3g}}<extra>{name}</extra>",
                                   xaxis=f"x{suffix}", yaxis=f"y{suffix}"))
    for k, metrics in enumerate(panels):
        layout[f"yaxis{_axis_suffix(k // 2 + 1, k % 2 + 1, 2)}"]["title"] = dict(
            text=" / ".join(label(m) for m in metrics))
    for c in (1, 2):
        layout[f"xaxis{_axis_suffix(rows, c, 2)}"]["title"] = dict(text="step")
    if rows * 2 > len(panels):                      # an odd panel count: the last row's right cell is empty
        layout[f"xaxis{_axis_suffix(rows - 1, 2, 2)}"].update(title=dict(text="step"), showticklabels=True)
    pairs = [p for p in panels if len(p) > 1]
    if pairs:
        traces += dash_legend_traces({"solid": "solid: " + ", ".join(label(p[0]) for p in pairs),
                                      "dash": "dashed: " + ", ".join(label(p[1]) for p in pairs)})
    layout.update(height=height, margin=dict(l=60, r=20, t=50, b=40))
    return _with_grid(_themed(go.Figure(data=traces, layout=layout)), grid, grid_str)


def advantage_heatmap(history: History, title: str | None = None) -> go.Figure:
    """Per-token advantages of the last sampled batch (``artifacts['last_batch']``)."""
    art = history.artifacts.get("last_batch")
    if art is None:                                  # policy_optimization writes it at the end of a run
        return pending(title or "advantage per token (last batch)", "the last batch's advantages")
    adv = np.array(art["advantages"], dtype=float)
    labels = [f"{i}: {t} (R={r:.2f})" for i, (t, r) in enumerate(zip(art["texts"], art["rewards"]))]
    if adv.shape[1] == 1:                            # one-token responses: one bar per response
        rewards = np.asarray(art["rewards"], dtype=float)
        fig = go.Figure(go.Bar(x=list(range(len(labels))), y=adv[:, 0], hovertext=labels, showlegend=False,
                               marker_color=[color(0) if r > 0 else color(1) for r in rewards]))
        fig.update_layout(title=title or "advantage of each response (last batch; blue: reward > 0)",
                          xaxis_title="response", yaxis_title="advantage A_i", height=300,
                          margin=dict(l=60, r=20, t=50, b=40))
        return fig
    padded = bool(np.isnan(adv).any())
    fig = heatmap(adv, y=labels, x=list(range(adv.shape[1])), x_title="response token", y_title="response",
                  z_title="A", title=title or ("advantage per token (last batch" +
                                               ("; blank = padding)" if padded else ")")))
    fig.update_yaxes(autorange="reversed", showticklabels=len(labels) <= 32)
    fig.update_layout(height=min(560, 120 + 14 * len(labels)))
    return fig


def advantage_bars(advantages: Mapping[str, Sequence[float]], rewards: Sequence[float],
                   title: str = "advantages of one group") -> go.Figure:
    """Grouped bars: one group of responses on x (labelled by reward), one color per estimator."""
    x = [f"y{i} (R={r:g})" for i, r in enumerate(rewards)]
    return grouped_bars(advantages, x, title=title, y_title="advantage A_i")


def aggregation_weights(weights: Mapping[str, Sequence[float]], lengths: Sequence[int],
                        title: str = "gradient weight per token by aggregation mode") -> go.Figure:
    """Bars: for each response (labelled by length), the weight ∂L/∂(A·ℓ_t) of each of its tokens."""
    x = [f"y{i} (|y|={n})" for i, n in enumerate(lengths)]
    return grouped_bars({AGG_NAMES.get(k, k): v for k, v in weights.items()}, x, title=title,
                        y_title="weight per token")


# ---------------------------------------------------------------------------------------------
# The advantage calculator of the policy-gradient lesson
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalculatorConfig:
    """Config of :func:`advantage_calculator`: one group of G responses with 0/1 rewards."""

    r0: bool = True  # response 0 is correct (reward 1)
    r1: bool = False  # response 1 is correct
    r2: bool = False  # response 2 is correct
    r3: bool = True  # response 3 is correct
    r4: bool = False  # response 4 is correct
    r5: bool = True  # response 5 is correct
    r6: bool = False  # response 6 is correct
    r7: bool = False  # response 7 is correct
    group_size: int = 6  # G: how many of r0..r7 form the group
    lengths: tuple[int, ...] = (2, 9, 4, 12, 3, 7, 6, 10)  # response lengths (tokens)
    estimators: tuple[str, ...] = ("reinforce_baseline", "rloo", "grpo", "grpo(std='population')", "dr_grpo")  # specs

    def inactive_fields(self) -> set[str]:
        """The responses beyond the group (r_G .. r7): a panel greys their checkboxes out."""
        return {f"r{i}" for i in range(max(self.group_size, 0), 8)}


def advantage_calculator(cfg: CalculatorConfig) -> dict:
    """Each estimator's advantages for the group, and each aggregation mode's per-token weight.

    The weight of mode ``agg`` for response i is ``∂ agg(x)/∂ x_{i,t}`` at any valid token: the factor
    by which the loss scales ``A_i ∇ℓ_{i,t}`` (token_mean: 1/Σ L; seq_mean_token_mean: 1/(G L_i);
    seq_mean_token_sum: 1/G; seq_mean_token_sum_norm: 1/(G·C) with C = max length).
    """
    import torch

    from lab.rl.core import AGG_MODES, GlobalNorm, aggregate, call_with, make_fn

    G = cfg.group_size
    if not 2 <= G <= 8 or len(cfg.lengths) < G:
        raise ValueError(f"group_size must lie in [2, 8] with a length per response, got {G}")
    rewards = torch.tensor([float(getattr(cfg, f"r{i}")) for i in range(G)])
    lengths = torch.tensor(cfg.lengths[:G])
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]                 # (G, T)
    batch = {"rewards": rewards, "group_size": G, "mask": mask}
    advantages = {spec: call_with(make_fn("advantage", spec), batch)[0].tolist() for spec in cfg.estimators}
    weights = {}
    for agg in AGG_MODES:
        x = torch.zeros(mask.shape, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(aggregate(x, mask, agg, GlobalNorm(norm_const=float(lengths.max()))), x)
        weights[agg] = grad[:, 0].tolist()
    return {"rewards": rewards.tolist(), "lengths": lengths.tolist(), "advantages": advantages,
            "weights": weights}


def calculator_figures(result: dict) -> list[go.Figure]:
    """The two figures of the advantage calculator."""
    return [advantage_bars(result["advantages"], result["rewards"]),
            aggregation_weights(result["weights"], result["lengths"])]


def policy_figures(history: History) -> list[go.Figure]:
    """Training curves and the per-token advantage heatmap of the last batch."""
    return [training_figure(history), advantage_heatmap(history)]
