"""Plotly figure builders (``go.Figure`` out) and ipywidgets panels."""
from lab.viz.figures import (  # noqa: F401
    bar, color, curves, grouped_bars, heatmap, history_figure, trajectory_figure,
)
from lab.viz.panel import Panel, panel  # noqa: F401
