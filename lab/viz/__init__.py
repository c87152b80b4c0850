"""Plotly figure builders (``go.Figure`` out) and ipywidgets panels."""
from lab.viz.figures import bar, color, curves, heatmap, history_figure, trajectory_figure  # noqa: F401
from lab.viz.panel import Panel, panel  # noqa: F401
