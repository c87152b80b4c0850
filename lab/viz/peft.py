"""Figures of the PEFT and merging lessons: loss vs trainable parameters, AdaLoRA's rank allocation,
merged vs unmerged outputs, and checkpoint merging / ensembling results."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go

from lab.history import History
from lab.viz.figures import bar, color, curves, heatmap, pending


def loss_vs_params(runs: Mapping[str, History]) -> go.Figure:
    """Final held-out loss against the number of trainable parameters, one point per method."""
    fig = go.Figure()
    for i, (name, h) in enumerate(runs.items()):
        fig.add_trace(go.Scatter(x=[max(h.artifacts["trainable"], 1)], y=[float(h["test_loss"][-1])],
                                 mode="markers+text", text=[name], textposition="top center",
                                 marker=dict(size=12, color=color(i)), name=name))
    fig.update_layout(title="held-out loss vs trainable parameters", xaxis_title="trainable parameters (log)",
                      yaxis_title="final test loss (log)", xaxis_type="log", yaxis_type="log",
                      showlegend=False, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def rank_allocation(history: History) -> go.Figure:
    """AdaLoRA's live rank per layer over training (a heatmap: layers × steps)."""
    ranks = np.asarray(history.artifacts.get("rank_history", []), dtype=float)   # (steps, layers)
    if ranks.size == 0:
        return go.Figure().update_layout(title="rank allocation: run method='adalora'")
    return heatmap(ranks.T, y=list(history.artifacts["layers"]), colorscale="Viridis", zmid=None,
                   title="AdaLoRA live rank per layer", x_title="step", y_title="layer")


def merged_vs_unmerged(history: History) -> go.Figure:
    """Outputs of the merged model against the adapted (unmerged) model: points on the diagonal."""
    a = history.artifacts
    if "merged" not in a:
        return go.Figure().update_layout(title="merge: no adapters in this run")
    lo, hi = min(a["unmerged"]), max(a["unmerged"])
    fig = go.Figure([go.Scatter(x=a["unmerged"], y=a["merged"], mode="markers", name="outputs"),
                     go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot"), name="y = x")])
    fig.update_layout(title=f"merged vs unmerged output (max |diff| = {a['merge_max_diff']:.1e})",
                      xaxis_title="adapted model W0·x + ΔW·x", yaxis_title="merged model (W0 + ΔW)·x",
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig


def finetune_figure(history: History) -> list[go.Figure]:
    """Loss curves, merged-vs-unmerged outputs and (AdaLoRA) rank allocation of one run."""
    figs = [curves(history, ["loss", "test_loss"], log_y=True, title=f"{history.meta.get('algorithm')}: "
                   f"{history.artifacts['trainable']} trainable parameters"), merged_vs_unmerged(history)]
    if history.artifacts.get("rank_history"):
        figs.append(rank_allocation(history))
    return figs


def merging_figure(history: History) -> list[go.Figure]:
    """Test loss along the run with the checkpoints marked, MWA weights, and the comparison bars."""
    a = history.artifacts
    run = curves(history, "test_loss", title="LoRA run (held-out loss); checkpoints marked")
    if "ckpt_steps" not in a:                        # the merges are made at the end of the run
        return [run, pending("MWA weights per checkpoint", "the merge weights"),
                pending("held-out loss", "the merged models' loss")]
    steps = np.asarray(history.steps)
    at = [float(history["test_loss"][np.searchsorted(steps, s - 1)]) for s in a["ckpt_steps"]]
    run.add_trace(go.Scatter(x=[s - 1 for s in a["ckpt_steps"]], y=at, mode="markers", name="checkpoints",
                             marker=dict(size=9, symbol="diamond")))
    weights = go.Figure(go.Bar(x=[str(s) for s in a["ckpt_steps"]], y=a["weights"], showlegend=False))
    weights.update_layout(title="MWA weights per checkpoint", xaxis_title="checkpoint step",
                          yaxis_title="w_k")
    compare = bar({"last checkpoint": a["test_loss_last"], "uniform average": a["test_loss_uniform"],
                   "MWA": a["test_loss_mwa"], "single model (mean)": float(np.mean(a["single_test_losses"])),
                   "ensemble": a["ensemble_test_loss"]}, title="held-out loss", y_title="test MSE",
                  x_title="model")
    return [run, weights, compare]
