"""Figures of the memory-efficient optimizer lesson (``lab.experiments.memory_efficient``).

- :func:`memory_bars`: optimizer-state bytes per parameter, one bar per method (AdamW included).
- :func:`energy_curves`: the fraction of gradient energy the state-full subspace captured, per step.
- :func:`memory_dashboard`: loss curves, the memory bars and the energy curves, for a panel.
"""
from __future__ import annotations

from typing import Mapping

import plotly.graph_objects as go

from lab.history import History
from lab.viz.figures import bar, curves, pending


def memory_bars(runs: Mapping[str, History], *, title: str | None = None) -> go.Figure:
    """Peak bytes in ``optimizer.state`` per model parameter, by method."""
    if not all("memory" in h.artifacts for h in runs.values()):      # measured at the end of a run
        return pending(title or "optimizer state: bytes per parameter", "the measured state memory")
    values = {label: h.artifacts["memory"]["bytes_per_param"] for label, h in runs.items()}
    fig = bar(values, title=title or "optimizer state: bytes per parameter (float32 AdamW = 8)",
              y_title="bytes / parameter", x_title="method")
    fig.update_traces(text=[f"{v:.2f}" for v in values.values()], textposition="outside")
    return fig


def energy_curves(runs: Mapping[str, History], *, title: str | None = None) -> go.Figure:
    """``||S(G)||^2 / ||G||^2`` per step: how much of the gradient the state-full rule saw."""
    fig = curves(runs, "energy", title=title or "gradient energy captured by the state-full subspace")
    fig.update_yaxes(range=[0, 1.05])
    return fig


def memory_dashboard(runs: Mapping[str, History]) -> list[go.Figure]:
    """Loss curves, bytes per parameter, captured energy: the notebook panel's three figures."""
    return [curves(runs, "loss", log_y=True, title="training loss (minibatch)"),
            memory_bars(runs), energy_curves(runs)]


__all__ = ["memory_bars", "energy_curves", "memory_dashboard"]
