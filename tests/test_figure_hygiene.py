"""Plot hygiene: every figure builder of ``lab.viz`` and every experiment's plot, on small runs.

The builders are found programmatically (every public function of a ``lab.viz`` module whose
return annotation is a figure, and every registered experiment's ``plot``); each needs an example
input in ``EXAMPLES`` below, so a new builder fails here until it has one. Every figure must use
the lab's template, label each axis it draws data on, show exponents as ``1e-3`` (never SI
prefixes), keep legends outside the plotting area and apart from colour bars, explain dash styles
in the legend, name traces for people (no bare ``snake_case_identifiers``), leave room between
stacked subplots for their titles and tick labels, send no infinity, and serialize for the widget
channel as strict JSON.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import pkgutil
import re

import numpy as np
import plotly.graph_objects as go
import pytest

import lab.viz
from lab.experiments import run
from lab.history import History, Runs
from lab.registry import available, get
from lab.viz.figures import TEMPLATE
from lab.viz.panel import jsonable

pytestmark = pytest.mark.slow
CARTESIAN = {"scatter", "scattergl", "bar", "heatmap", "contour", "histogram", "box", "violin",
             "histogram2d", "histogram2dcontour"}
IDENTIFIER = re.compile(r"^[a-z0-9]+(_[a-z0-9]+){2,}$")
WIDTH_PX = 900                      # a notebook output area
SKIP_MODULES = {"panel", "lessons"}
NOT_BUILDERS = {"figures.make_subplots", "figures.dash_legend"}   # helpers: a figure in, a figure out


# ---- finding the builders --------------------------------------------------------------------
def builders() -> dict[str, object]:
    found = {}
    for mod in pkgutil.iter_modules(lab.viz.__path__):
        if mod.name.startswith("_") or mod.name in SKIP_MODULES:
            continue
        module = importlib.import_module(f"lab.viz.{mod.name}")
        for name, fn in vars(module).items():
            if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != module.__name__:
                continue
            if "Figure" in str(fn.__annotations__.get("return", "")) and f"{mod.name}.{name}" not in NOT_BUILDERS:
                found[f"{mod.name}.{name}"] = fn
    return found


@functools.cache
def smoke(name: str, **changes) -> History:
    fn = get("experiment", name)
    return run(name, **{**fn.smoke, **changes})


def runs(name: str, **changes) -> Runs:
    h = smoke(name, **changes)
    return Runs({"first run": h, "second run": h})


def _surface_runs():
    return runs("optimizer_on_surface", optimizer="adam", steps=20)


def _calculator():
    from lab.viz.rl import CalculatorConfig, advantage_calculator

    return advantage_calculator(CalculatorConfig())


# builder -> callable returning a list of (args, kwargs) to call it with
EXAMPLES = {
    "curricula.curriculum_figure": lambda: [((runs("curriculum"),), {})],
    "curricula.vas_figure": lambda: [((smoke("value_augmented_sampling"),), {})],
    "distributed.distributed_figure": lambda: [((runs("distributed_training"),), {})],
    "federated.convergence_figure": lambda: [((runs("federated"),), {})],
    "federated.weights_figure": lambda: [((runs("federated"),), {})],
    "federated.drift_figure": lambda: [((runs("federated"),), {})],
    "federated.participation_raster": lambda: [((smoke("federated"),), {})],
    "federated.dashboard": lambda: [((runs("federated"),), {})],
    "figures.curves": lambda: [((_surface_runs(), ["loss", "grad_norm"]), {"log_y": [True, True]}),
                               ((_surface_runs(), "loss"), {})],
    "figures.trajectory_figure": lambda: [((_surface_runs(),), {})],
    "figures.heatmap": lambda: [(([[1.0, np.nan], [0.0, -1.0]],), {"x_title": "token", "y_title": "response"})],
    "figures.pending": lambda: [(("advantage per token",), {"what": "the last batch"})],
    "figures.history_figure": lambda: [((smoke("optimizer_on_surface"),), {})],
    "figures.bar": lambda: [(({"adamw": 8.0, "galore": 2.0},), {"y_title": "bytes", "log_y": True})],
    "figures.grouped_bars": lambda: [(({"grpo": [1.0, -1.0], "rloo": [2.0, -2.0]}, ["y0", "y1"]),
                                      {"y_title": "A"})],
    "flow.samples_figure": lambda: [(({"data": [[0.0, 1.0], [1.0, 0.0]]},), {"center": [1.0, 1.0]})],
    "flow.metric_figure": lambda: [((smoke("flow_finetune"), ["reward"]), {})],
    "flow.finetune_figures": lambda: [((smoke("flow_finetune"),), {})],
    "flow.pretrain_figures": lambda: [((smoke("flow_pretrain"),), {})],
    "flow.guidance_figures": lambda: [((smoke("flow_guidance"),), {})],
    "memory.memory_bars": lambda: [((runs("memory_efficient"),), {})],
    "memory.energy_curves": lambda: [((runs("memory_efficient"),), {})],
    "memory.memory_dashboard": lambda: [((runs("memory_efficient"),), {})],
    "moe.load_heatmap": lambda: [((runs("moe_routing_sim"),), {})],
    "moe.balance_curves": lambda: [((runs("moe_routing_sim"),), {})],
    "moe.bias_figure": lambda: [((runs("moe_routing_sim", balancer="aux_free_bias"),), {})],
    "moe.primal_dual_figure": lambda: [((smoke("alf_primal_dual"),), {}),
                                       ((smoke("alf_primal_dual", mode="deterministic"),), {})],
    "multi_objective.training_figure": lambda: [((runs("multi_objective"),), {})],
    "multi_objective.pareto_figure": lambda: [((runs("multi_objective"),), {})],
    "multi_objective.sweep_figure": lambda: [(({"fixed": {"points": [[0.1, 0.9], [0.5, 0.5]], "hypervolume": 0.3,
                                                          "weights": [[0.2, 0.8], [0.5, 0.5]]}},
                                               [[0.0, 1.0], [1.0, 0.0]]), {})],
    "optim.effective_step_figure": lambda: [((_surface_runs(),), {})],
    "optim.time_to_target_table": lambda: [((runs("digits_mlp"),), {"target": 0.5})],
    "optim.surface_figures": lambda: [((_surface_runs(),), {})],
    "optim.digits_figures": lambda: [((runs("digits_mlp"),), {"target": 0.5})],
    "optim.algoperf_figures": lambda: [((smoke("algoperf"),), {})],
    "peft.loss_vs_params": lambda: [((runs("peft_finetune"),), {})],
    "peft.rank_allocation": lambda: [((smoke("peft_finetune", method="adalora"),), {})],
    "peft.merged_vs_unmerged": lambda: [((smoke("peft_finetune"),), {})],
    "peft.finetune_figure": lambda: [((smoke("peft_finetune", method="adalora"),), {})],
    "peft.merging_figure": lambda: [((smoke("checkpoint_merging"),), {})],
    "phenomena.stability_gap_figure": lambda: [((smoke("stability_gap_digits"),), {})],
    "phenomena.useful_figure": lambda: [((smoke("useful_simplicity"),), {})],
    "phenomena.ibcl_figure": lambda: [((smoke("ibcl_tradeoffs"),), {})],
    "phenomena.double_descent_figure": lambda: [((smoke("double_descent"),), {})],
    "phenomena.opposing_signals_figure": lambda: [((smoke("opposing_signals"),), {})],
    "phenomena.large_batch_figure": lambda: [((runs("large_batch_gap"),), {})],
    "phenomena.highdim_figure": lambda: [((runs("highdim_dynamics"),), {})],
    "preference.reward_shape_figure": lambda: [((), {})],
    "preference.logprob_figure": lambda: [((runs("preference_training"),), {})],
    "preference.ranking_figure": lambda: [((runs("preference_training"),), {})],
    "preference.training_figure": lambda: [((smoke("preference_training"),), {})],
    "preference.lesson_figures": lambda: [((smoke("preference_training"),), {})],
    "preference.sft_figure": lambda: [((runs("sft_divergences"),), {})],
    "rl.training_figure": lambda: [((runs("policy_optimization"),), {})],
    "rl.advantage_heatmap": lambda: [((smoke("policy_optimization"),), {}),
                                     ((smoke("policy_optimization", task="reverse(difficulty=3)",
                                             model="transformer", steps=2),), {})],
    "rl.advantage_bars": lambda: [((_calculator()["advantages"], _calculator()["rewards"]), {})],
    "rl.aggregation_weights": lambda: [((_calculator()["weights"], _calculator()["lengths"]), {})],
    "rl.calculator_figures": lambda: [((_calculator(),), {})],
    "rl.policy_figures": lambda: [((smoke("policy_optimization"),), {})],
    "segments.segment_figure": lambda: [((smoke("segment_advantages"),), {})],
    "segments.truncation_figure": lambda: [((smoke("truncation_window"),), {})],
    "segments.kl_schedule_figure": lambda: [((), {})],
    "segments.sign_figure": lambda: [((_sign_runs(),), {})],
    "segments.copo_figure": lambda: [((Runs({"grpo": smoke("policy_optimization"),
                                             "copo": smoke("policy_optimization")}),), {})],
    "distributed.real_vs_simulated_figure": lambda: [((Runs({"simulated: local_sgd": smoke("distributed_training"),
                                                             "2 processes: local_sgd": smoke("distributed_training")}),),
                                                      {})],
    "moe.layer_load_heatmaps": lambda: [((smoke("moe_hf"),), {})],
    "moe.loss_gap": lambda: [((Runs({"none": smoke("moe_transformer"), "switch_aux": smoke("moe_transformer")}),),
                              {"window": 2})],
    "segments.grpo_d_plot": lambda: [((smoke("policy_optimization"),), {})],
    "sharpness.sharp_flat_figure": lambda: [((runs("sharp_flat"),), {})],
    "sharpness.sharpness_curves": lambda: [((runs("sharpness_digits"),), {})],
    "solvers.ips_figure": lambda: [((smoke("ips_convergence"),), {})],
    "solvers.graph_figure": lambda: [((smoke("graph_learning"),), {})],
    "zoo.advantage_zoo_figure": lambda: [((smoke("advantage_zoo"),), {})],
    "zoo.head_to_head_figure": lambda: [((runs("policy_optimization"),), {})],
    "zoo.token_view_figure": lambda: [((smoke("token_view"),), {})],
}


def _sign_runs():
    h = smoke("policy_optimization")
    h.artifacts.setdefault("effective_correct", 1.0)
    return Runs({"psr": h, "nsr": h})


# ---- the checks ------------------------------------------------------------------------------
def _walk(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}" if path else k)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value


def _infinite(fig: go.Figure) -> list[str]:
    bad = []
    for path, value in _walk(fig.to_plotly_json()):
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and np.isinf(value).any():
            bad.append(path)
        elif isinstance(value, float) and math.isinf(value):
            bad.append(path)
    return [f"infinite values sent at {', '.join(bad[:4])}"] if bad else []


def _strict_json(fig: go.Figure) -> list[str]:
    def widget(v):                            # what ipywidgets puts in the JSON part of a message
        if isinstance(v, np.ndarray):
            return None if v.ndim == 1 and v.dtype.kind in "uif" and v.dtype.itemsize < 8 or \
                v.ndim == 1 and v.dtype == np.float64 else widget(v.tolist())
        if isinstance(v, dict):
            return {k: widget(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [widget(x) for x in v]
        return v
    try:
        json.dumps(widget(jsonable(fig.to_plotly_json())), allow_nan=False, default=str)
    except ValueError as exc:
        return [f"not strict JSON for the widget channel: {exc}"]
    return []


def _axis(layout, letter: str, ref: str):
    return layout[f"{letter}axis{ref[1:]}"]


def _axes(fig: go.Figure) -> list[str]:
    bad = []
    layout, template_axis = fig.layout, TEMPLATE.layout
    used = set()
    for t in fig.data:
        if t.type in CARTESIAN:
            used.add(("x", t.xaxis or "x"))
            used.add(("y", t.yaxis or "y"))
    for letter, ref in sorted(used):
        ax = _axis(layout, letter, ref)
        if ax.visible is False or ax.showticklabels is False:
            continue
        if not (ax.title and ax.title.text):
            bad.append(f"{letter}axis{ref[1:]} has no title")
        fmt = ax.exponentformat or template_axis[f"{letter}axis"].exponentformat
        if fmt in (None, "B", "SI"):
            bad.append(f"{letter}axis{ref[1:]} shows SI prefixes (exponentformat {fmt})")
        if ax.tickformat and "s" in ax.tickformat:
            bad.append(f"{letter}axis{ref[1:]} tickformat {ax.tickformat!r} uses SI prefixes")
    return bad


def _legend(fig: go.Figure) -> list[str]:
    bad = []
    shown = [t for t in fig.data if t.type not in ("table",) and t.showlegend is not False
             and (t.name or t.type in ("scatter", "bar"))]
    legend_on = fig.layout.showlegend is not False and (len(shown) > 1 or fig.layout.showlegend)
    lx, ly = fig.layout.legend.x, fig.layout.legend.y
    if legend_on and lx is not None and 0 <= lx <= 1 and (ly is None or 0 <= ly <= 1):
        bad.append(f"legend inside the plotting area (x={lx}, y={ly})")
    if legend_on and (lx is None or lx > 1):
        for t in fig.data:
            bar = None
            if t.type in ("heatmap", "contour") and t.showscale is not False:
                bar = t.colorbar
            elif t.type == "scatter" and t.marker and t.marker.showscale:
                bar = t.marker.colorbar
            if bar is not None and (bar.x is None or bar.x > 1) and bar.orientation != "h":
                bad.append(f"colour bar of {t.name or t.type!r} on top of the legend")
    for t in fig.data:
        if IDENTIFIER.match(getattr(t, "name", None) or "") and getattr(t, "showlegend", None) is not False:
            bad.append(f"trace named by a bare identifier: {t.name!r}")
    dashes_explained = {(t.line.dash or "solid") for t in fig.data
                        if t.type == "scatter" and t.showlegend is not False and fig.layout.showlegend is not False}
    for t in fig.data:
        if t.type == "scatter" and t.line and t.line.dash not in (None, "solid") \
                and t.line.dash not in dashes_explained and "lines" in (t.mode or "lines"):
            bad.append(f"dash style {t.line.dash!r} not explained in the legend")
            break
    return bad


def _spacing(fig: go.Figure) -> list[str]:
    """Stacked subplots leave room for the upper one's x labels and the lower one's title."""
    bad = []
    layout = fig.layout
    height = layout.height or 450
    margin = layout.margin
    plot_h = height - (margin.t if margin.t is not None else 60) - (margin.b if margin.b is not None else 50)
    plot_w = WIDTH_PX - (margin.l if margin.l is not None else 60) - (margin.r if margin.r is not None else 20) - 120
    titles = [a for a in layout.annotations if a.xref == "paper" and a.yanchor == "bottom"]
    axes = [k for k in layout if k.startswith("xaxis") and layout[k].domain is not None]
    cells = []
    for xk in axes:
        xa = layout[xk]
        ya = layout[xa.anchor.replace("y", "yaxis")] if xa.anchor and xa.anchor.startswith("y") else None
        if ya is None or ya.domain is None:
            continue
        cells.append((xk, xa, ya))
    for xk, xa, ya in cells:
        for xk2, xa2, ya2 in cells:
            overlap_x = min(xa.domain[1], xa2.domain[1]) - max(xa.domain[0], xa2.domain[0])
            if overlap_x > 0.05 and ya2.domain[1] <= ya.domain[0] + 1e-9:        # (2) right below (1)
                below = [c for c in cells if c[1].domain[1] <= ya.domain[0] + 1e-9 and c[2].domain[1] > ya2.domain[1] + 1e-9
                         and min(c[1].domain[1], xa.domain[1]) - max(c[1].domain[0], xa.domain[0]) > 0.05]
                if below:
                    continue
                gap = (ya.domain[0] - ya2.domain[1]) * plot_h
                need = 0.0
                if xa.showticklabels is not False:
                    need += 18 + (16 if xa.title and xa.title.text else 0)
                has_title = any(abs(a.y - ya2.domain[1]) < 1e-6 and xa2.domain[0] - 1e-6 <= a.x <= xa2.domain[1] + 1e-6
                                for a in titles)
                need += 20 if has_title else 0
                if gap + 1 < need:
                    bad.append(f"{xk2} sits {gap:.0f} px below {xk}; its labels need {need:.0f} px")
            overlap_y = min(ya.domain[1], ya2.domain[1]) - max(ya.domain[0], ya2.domain[0])
            if overlap_y > 0.05 and xa2.domain[0] >= xa.domain[1] - 1e-9 and ya2.showticklabels is not False:
                nearer = [c for c in cells if c[1].domain[0] >= xa.domain[1] - 1e-9 and c[1].domain[0] < xa2.domain[0] - 1e-9]
                if nearer:
                    continue
                gap = (xa2.domain[0] - xa.domain[1]) * plot_w
                need = 30 + (18 if ya2.title and ya2.title.text else 0)
                if gap + 1 < need:
                    bad.append(f"{xk2} sits {gap:.0f} px right of {xk}; its y labels need {need:.0f} px")
    return sorted(set(bad))


def _template(fig: go.Figure) -> list[str]:
    t = fig.layout.template.layout
    ok = t.font.family == TEMPLATE.layout.font.family and t.xaxis.exponentformat == "e"
    return [] if ok else ["not the lab's template (lab.viz.figures.TEMPLATE)"]


def problems(fig: go.Figure) -> list[str]:
    return (_template(fig) + _axes(fig) + _legend(fig) + _spacing(fig) + _infinite(fig)
            + _strict_json(fig))


def _figures(result) -> list[go.Figure]:
    return [result] if isinstance(result, go.Figure) else list(result)


# ---- the tests -------------------------------------------------------------------------------
def test_every_builder_has_an_example():
    missing = sorted(set(builders()) - set(EXAMPLES))
    stale = sorted(set(EXAMPLES) - set(builders()))
    assert not missing, f"figure builders without an example input in EXAMPLES: {missing}"
    assert not stale, f"EXAMPLES for builders that no longer exist: {stale}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_figure_builder_hygiene(name):
    fn = builders()[name]
    found = []
    for args, kwargs in EXAMPLES[name]():
        for k, fig in enumerate(_figures(fn(*args, **kwargs))):
            found += [f"figure {k}: {p}" for p in problems(fig)]
    assert not found, f"{name}:\n" + "\n".join(found)


@pytest.mark.parametrize("experiment", available("experiment"))
def test_experiment_plot_hygiene(experiment):
    fn = get("experiment", experiment)
    if fn.plot is None:
        pytest.skip("no plot")
    found = [f"figure {k}: {p}" for k, fig in enumerate(_figures(fn.plot(smoke(experiment))))
             for p in problems(fig)]
    assert not found, f"{experiment}:\n" + "\n".join(found)


def test_the_checks_catch_what_they_are_for():
    """Each rule fails on a figure that breaks it (so the tests above can fail)."""
    fig = go.Figure(go.Scatter(x=[1, 2], y=[1e-6, 1e-3], name="loss"),
                    layout=dict(yaxis_type="log", xaxis_title="step", yaxis_title="loss",
                                yaxis_exponentformat="SI"))
    assert any("SI" in p for p in problems(fig))
    fig = go.Figure(go.Scatter(x=[1, 2], y=[1, 2]), layout=dict(xaxis_title="step"))
    assert "yaxis has no title" in problems(fig)
    fig = go.Figure(go.Heatmap(z=[[1.0, math.inf]]), layout=dict(xaxis_title="a", yaxis_title="b"))
    assert any("infinite" in p for p in problems(fig))
    fig = go.Figure(go.Heatmap(z=np.array([[1.0, math.nan]])), layout=dict(xaxis_title="a", yaxis_title="b"))
    assert not problems(fig), "NaN gaps in a 2-D array are made safe by the panel"
    fig = go.Figure([go.Scatter(y=[1, 2], name="a b"), go.Scatter(y=[0, 1], name="c"),
                     go.Scatter(y=[2, 1], name="seq_mean_token_sum",
                                                                  line=dict(dash="dash"), showlegend=False)],
                    layout=dict(xaxis_title="a", yaxis_title="b", legend=dict(x=0.1, y=0.9)))
    found = problems(fig)
    assert any("inside" in p for p in found) and any("dash" in p for p in found)
    fig = go.Figure([go.Scatter(y=[1, 2], name="seq_mean_token_sum"), go.Scatter(y=[1, 3], name="b")],
                    layout=dict(xaxis_title="a", yaxis_title="b", template="plotly_white"))
    found = problems(fig)
    assert any("identifier" in p for p in found) and any("template" in p for p in found)
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, subplot_titles=("a", "b"), vertical_spacing=0.02)
    fig.add_trace(go.Scatter(y=[1, 2]), row=1, col=1)
    fig.add_trace(go.Scatter(y=[1, 2]), row=2, col=1)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="v")
    assert any("below" in p for p in problems(fig))


@pytest.mark.parametrize("kwargs", [dict(rows=1, cols=1), dict(rows=2, cols=1, shared_xaxes=True),
                                    dict(rows=2, cols=2, shared_xaxes=True, vertical_spacing=0.06,
                                         horizontal_spacing=0.12),
                                    dict(rows=1, cols=3, shared_yaxes=True, subplot_titles=("a", "b", "c")),
                                    dict(rows=3, cols=2, subplot_titles=("a", "b", "c", "d", "e", "f"))])
def test_the_lab_make_subplots_matches_plotly(kwargs):
    from plotly.subplots import make_subplots as plotly_make_subplots

    from lab.viz.figures import make_subplots

    ours, theirs = make_subplots(**kwargs), plotly_make_subplots(**kwargs)
    a, b = ours.layout.to_plotly_json(), theirs.layout.to_plotly_json()
    for layout in (a, b):
        layout.pop("template", None)
        for note in layout.get("annotations", []):
            note.pop("font", None)
    def rounded(v):
        if isinstance(v, float):
            return round(v, 9) + 0.0
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [rounded(x) for x in v]
        return v

    assert json.dumps(rounded(a), sort_keys=True) == json.dumps(rounded(b), sort_keys=True)
    assert ours._grid_ref == theirs._grid_ref
    rows, cols = kwargs["rows"], kwargs["cols"]
    ours.add_trace(go.Scatter(y=[1, 2]), row=rows, col=cols)
    theirs.add_trace(go.Scatter(y=[1, 2]), row=rows, col=cols)
    assert (ours.data[0].xaxis, ours.data[0].yaxis) == (theirs.data[0].xaxis, theirs.data[0].yaxis)
