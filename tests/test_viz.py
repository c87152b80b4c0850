"""Figure builders and the interactive panel."""
import dataclasses

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import pytest

from lab.experiments import run, sweep
from lab.history import History, Runs
from lab.viz import bar, curves, heatmap, history_figure, panel, trajectory_figure


def _runs():
    a, b = History(meta={"algorithm": "a"}), History(meta={"algorithm": "b"})
    for s in range(5):
        a.append(s, loss=1.0 / (s + 1), wall_time=0.1 * s)
        b.append(s, loss=2.0 / (s + 1), wall_time=0.2 * s)
    return Runs({"a": a, "b": b})


def test_curves_one_trace_per_run_and_metric_with_shared_colors():
    fig = curves(_runs(), ["loss", "wall_time"], log_y=[True, False])
    assert isinstance(fig, go.Figure) and len(fig.data) == 4
    assert [t.name for t in fig.data] == ["a", "a", "b", "b"]
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color
    assert fig.layout.yaxis.type == "log"
    np.testing.assert_allclose(fig.data[2].y, [2.0, 1.0, 2 / 3, 0.5, 0.4])
    fig = curves(_runs(), "loss", x="wall_time")
    np.testing.assert_allclose(fig.data[1].x, [0.0, 0.2, 0.4, 0.6, 0.8])


def test_trajectory_figure_draws_contours_paths_and_minimizers():
    runs = sweep("optimizer_on_surface", "optimizer", ["sgd", "adam"], surface="beale", steps=10,
                 lr=1e-3)
    fig = trajectory_figure(runs)
    assert isinstance(fig.data[0], go.Contour)
    assert [t.name for t in fig.data[1:]] == ["sgd", "adam", "start", "minimum"]
    assert len(fig.data[1].x) == 11
    with pytest.raises(ValueError, match="surface"):
        trajectory_figure(Runs({"x": History()}))


def test_heatmap_bar_and_history_figure():
    fig = heatmap([[1, np.nan], [0, -1]], title="adv")
    assert fig.data[0].z.shape == (2, 2)
    with pytest.raises(ValueError, match="2-D"):
        heatmap([1, 2, 3])
    assert list(bar({"adamw": 16.0, "galore": 4.0}).data[0].x) == ["adamw", "galore"]
    fig = history_figure(run("optimizer_on_surface", steps=3))
    assert {t.name for t in fig.data} == {"adam"}
    assert len(fig.data) == 3  # loss, grad_norm, distance; the 2-D xy is skipped


def _live(fig):
    """The traces of the current run (without the grey ghosts of the previous one)."""
    return [t for t in fig.data if t.legendgroup != "previous run"]


def test_panel_reruns_on_change_and_updates_the_same_figure_widget():
    p = panel("optimizer_on_surface", {"lr": ("log", -3, 0), "steps": (5, 200, 5),
                                       "surface": ["rosenbrock", "beale"], "optimizer": str})
    assert isinstance(p, widgets.VBox) and p.last_error is None
    fig = p.figures[0]
    assert isinstance(fig, go.FigureWidget)
    assert all(getattr(w, "continuous_update", False) is False for w in p.controls.values()
               if hasattr(w, "continuous_update"))
    before = np.array(_live(fig)[1].x)
    p.controls["steps"].value = 50
    assert p.figures[0] is fig, "the panel must keep one persistent FigureWidget"
    assert len(_live(fig)[1].x) == 51 != len(before)
    assert "ran in" in p.status.value and p.config.steps == 50
    p.controls["surface"].value = "beale"
    assert fig.layout.title.text == "beale"
    assert p.result.meta["surface"] == "beale"
    assert p.controls["lr"].tooltip and "learning rate" in p.controls["lr"].tooltip   # the field's comment


def test_panel_survives_a_failing_run():
    p = panel("optimizer_on_surface", {"optimizer": str, "lr": (0.001, 0.1, 0.001)})
    fig_data = [np.array(t.x) for t in _live(p.figures[0])[1:]]
    p.controls["optimizer"].value = "no_such_optimizer"
    assert "error" in p.status.value and "KeyError" in p.status.value
    assert isinstance(p.last_error, KeyError)
    np.testing.assert_array_equal(np.array(_live(p.figures[0])[1].x), fig_data[0])
    p.controls["optimizer"].value = "sgd"
    assert p.last_error is None and "ran in" in p.status.value
    assert p.result.meta["algorithm"] == "sgd"


def test_panel_with_a_callable_and_several_figures():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        n: int = 3
        scale: float = 1.0

    def experiment(cfg):
        h = History(meta={"algorithm": "toy"})
        for s in range(cfg.n):
            h.append(s, loss=cfg.scale * s)
        return h

    def plot(h):
        return [curves(h, "loss"), bar({"n": len(h)})]

    p = panel(experiment, {"n": (1, 10), "scale": (0.0, 2.0, 0.1)}, plot, config=Cfg())
    assert isinstance(p.controls["n"], widgets.IntSlider)
    assert isinstance(p.controls["scale"], widgets.FloatSlider)
    assert len(p.figures) == 2
    p.controls["n"].value = 7
    assert list(_live(p.figures[1])[0].y) == [7]
    with pytest.raises(TypeError, match="config is required"):
        panel(experiment, {"n": (1, 10)})
    with pytest.raises(KeyError, match="valid fields: n, scale"):
        panel(experiment, {"m": (1, 10)}, config=Cfg())


def test_grouped_bars_one_series_per_name_in_palette_order():
    from lab.viz import color, grouped_bars

    fig = grouped_bars({"grpo": [1.0, -1.0], "rloo": [2.0, -2.0]}, ["y0", "y1"], y_title="A")
    assert [t.name for t in fig.data] == ["grpo", "rloo"]
    assert list(fig.data[1].y) == [2.0, -2.0] and list(fig.data[0].x) == ["y0", "y1"]
    assert fig.data[1].marker.color == color(1) and fig.layout.barmode == "group"


def test_grid_builds_the_figure_make_subplots_and_row_col_updates_build():
    """lab.viz.figures.Grid writes the layout and traces as dicts and validates once; the figure
    is the one plotly's incremental calls give (and the template is the lab's)."""
    import plotly.graph_objects as go

    from lab.viz.figures import TEMPLATE, Grid, make_subplots

    titles = ("left", "right", "below")
    grid = Grid(rows=2, cols=2, shared_xaxes=True, horizontal_spacing=0.1, subplot_titles=titles)
    grid.add(dict(type="scatter", x=[0, 1], y=[1, 2], name="a", line=dict(color="red")), 1, 2)
    grid.add(dict(type="heatmap", z=[[1, 2], [3, 4]], showscale=False), 2, 1)
    grid.xaxis(2, 1, title="step")
    grid.yaxis(1, 2, title="loss", type="log")
    fast = grid.figure(height=300, title="t")

    slow = make_subplots(rows=2, cols=2, shared_xaxes=True, horizontal_spacing=0.1, subplot_titles=titles)
    slow.add_trace(go.Scatter(x=[0, 1], y=[1, 2], name="a", line=dict(color="red")), row=1, col=2)
    slow.add_trace(go.Heatmap(z=[[1, 2], [3, 4]], showscale=False), row=2, col=1)
    slow.update_xaxes(title_text="step", row=2, col=1)
    slow.update_yaxes(title_text="loss", type="log", row=1, col=2)
    slow.update_layout(height=300, title="t")
    assert fast.to_plotly_json() == slow.to_plotly_json()
    assert fast.layout.template.layout.font.family == TEMPLATE.layout.font.family
    fast.add_trace(go.Scatter(x=[0], y=[0]), row=2, col=2)          # the grid reference works
    assert fast.data[-1].xaxis == "x4" and fast.data[-1].yaxis == "y4"
