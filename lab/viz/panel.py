"""Interactive panels: controls bound to config fields, persistent FigureWidgets, re-run on change.

    panel("optimizer_on_surface",
          {"lr": (1e-3, 0.2, 1e-3), "surface": ["rosenbrock", "beale"], "steps": (10, 500, 10)})

A control spec is either an ipywidgets widget or a shorthand, read against the field's type:
``(lo, hi, step)`` -> IntSlider / FloatSlider, ``("log", lo_exp, hi_exp)`` -> FloatLogSlider,
a list of choices -> Dropdown, ``bool`` -> Checkbox, ``str`` -> Text. Every control has
``continuous_update=False``: the experiment re-runs when a slider is released. The figure(s) are
updated in place inside ``batch_update()`` so the plot does not flicker, and a status line shows
how long the last run took, or the error it raised (the panel keeps working after an error).
"""
from __future__ import annotations

import dataclasses
import html
import time
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go

from lab.experiments._base import field_docs, field_types, replace, run as run_experiment
from lab.registry import get

Plot = Callable[..., "go.Figure | Sequence[go.Figure]"]


def _make_control(field: str, spec: Any, value: Any, annotation: Any) -> widgets.Widget:
    style = {"description_width": "initial"}
    layout = widgets.Layout(width="320px")
    if isinstance(spec, widgets.Widget):
        widget = spec
    elif isinstance(spec, tuple) and spec and spec[0] == "log":
        _, lo, hi = spec
        widget = widgets.FloatLogSlider(value=value, base=10, min=lo, max=hi, step=0.1,
                                        readout_format=".2e", style=style, layout=layout)
    elif isinstance(spec, tuple) and len(spec) in (2, 3) and all(isinstance(v, (int, float)) for v in spec):
        lo, hi = spec[:2]
        is_int = annotation is int or (isinstance(value, int) and not isinstance(value, bool))
        if is_int:
            widget = widgets.IntSlider(value=value, min=lo, max=hi,
                                       step=spec[2] if len(spec) == 3 else 1, style=style, layout=layout)
        else:
            step = spec[2] if len(spec) == 3 else (hi - lo) / 100
            widget = widgets.FloatSlider(value=value, min=lo, max=hi, step=step, style=style,
                                         layout=layout, readout_format=".4g")
    elif isinstance(spec, list):
        widget = widgets.Dropdown(options=spec, value=value if value in spec else spec[0],
                                  style=style, layout=layout)
    elif spec is bool:
        widget = widgets.Checkbox(value=bool(value), indent=False)
    elif spec is str:
        widget = widgets.Text(value=str(value), style=style, layout=layout)
    else:
        raise TypeError(f"control for {field!r}: unsupported spec {spec!r}")
    if not widget.description:
        widget.description = field
    if hasattr(widget, "continuous_update"):
        widget.continuous_update = False
    return widget


class Panel(widgets.VBox):
    """Controls + one persistent ``go.FigureWidget`` per figure + a status line.

    Attributes: ``controls`` (field -> widget), ``figures`` (list of FigureWidget), ``status``
    (HTML line), ``config`` (the config of the last run), ``result`` (its History or Runs),
    ``last_error`` (the exception of the last run, or None), ``last_time`` (seconds).
    """

    def __init__(self, experiment: str | Callable[[Any], Any], controls: Mapping[str, Any],
                 plot: Plot | None = None, *, config: Any = None, run: bool = True,
                 columns: int = 2, claims: Sequence[Any] = (),
                 presets: Mapping[str, Mapping[str, Any]] | None = None):
        if isinstance(experiment, str):
            fn = get("experiment", experiment)
            self._runner = lambda cfg, _name=experiment: run_experiment(_name, cfg)
            config = fn.config() if config is None else config
            plot = plot or fn.plot
        else:
            if config is None:
                raise TypeError("config is required when experiment is a callable")
            self._runner = experiment
        if plot is None:
            from lab.viz.figures import history_figure
            plot = history_figure
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")
        self.config = config
        self._plot = plot
        types = field_types(type(config))
        unknown = [k for k in controls if k not in types]
        if unknown:
            raise KeyError(f"controls for unknown config field(s) {', '.join(unknown)}; "
                           f"valid fields: {', '.join(types)}")
        docs = field_docs(type(config))
        self.controls = {k: _make_control(k, spec, getattr(config, k), types[k])
                         for k, spec in controls.items()}
        for k, widget in self.controls.items():                   # hover text: the field's comment
            if docs.get(k) and not widget.tooltip:
                widget.tooltip = docs[k]
        self.status = widgets.HTML(value="")
        self._applying = False
        from lab.claims import markdown as claims_markdown, presets as claims_presets

        self.claims = list(claims)
        self.presets = claims_presets(self.claims, presets) if (self.claims or presets) else {}
        for name, overrides in self.presets.items():
            bad = [k for k in overrides if k not in types]
            if bad:
                raise KeyError(f"preset {name!r} sets unknown config field(s) {', '.join(bad)}; "
                               f"valid fields: {', '.join(types)}")
        self.preset = widgets.Dropdown(options=["(custom)", *self.presets], value="(custom)",
                                       description="preset", style={"description_width": "initial"},
                                       layout=widgets.Layout(width="320px"))
        self.preset.observe(self._on_preset, names="value")
        header = []
        if self.claims:
            header.append(widgets.HTMLMath(value=_markdown_to_html(claims_markdown(self.claims))))
        if self.presets:
            header.append(self.preset)
        if self.claims:
            self._check_opens_on(self.claims[0])
        self.figures: list[go.FigureWidget] = []
        self.result: Any = None
        self.last_error: BaseException | None = None
        self.last_time: float | None = None
        boxes = list(self.controls.values())
        rows = [widgets.HBox(boxes[i:i + columns]) for i in range(0, len(boxes), columns)]
        self._figure_box = widgets.VBox([])
        super().__init__(header + rows + [self.status, self._figure_box])
        for widget in self.controls.values():
            widget.observe(self._on_change, names="value")
        if run:
            self.update()

    # ------------------------------------------------------------------------------------
    def _check_opens_on(self, claim: Any) -> None:
        """A panel with claims must open on its first claim's config (the lesson's default view
        shows the claim): every field but the seed and the device must agree, after the controls
        have been built (a slider clamps a value outside its range)."""
        want, have = claim.configured("effect"), self.current_config()
        if type(want) is not type(have):
            return
        skip = {claim.seed_field, "device"}
        diff = {f.name: (getattr(have, f.name), getattr(want, f.name)) for f in dataclasses.fields(have)
                if f.name not in skip and getattr(have, f.name) != getattr(want, f.name)}
        if diff:
            raise ValueError(f"the panel opens on a config where its claim {claim.id!r} was not checked; "
                             f"field: (panel value, claim value): {diff}")

    def current_config(self) -> Any:
        """The base config with every control's value applied."""
        return replace(self.config, **{k: w.value for k, w in self.controls.items()})

    def _on_change(self, change: Mapping[str, Any]) -> None:
        if self._applying:
            return
        if self.presets and self.preset.value != "(custom)":
            self._applying = True
            self.preset.value = "(custom)"
            self._applying = False
        self.update()

    def _on_preset(self, change: Mapping[str, Any]) -> None:
        if self._applying or change["new"] == "(custom)":
            return
        self.apply_preset(change["new"])

    def apply_preset(self, name: str) -> bool:
        """Set every control (and config field) the preset names at once, then run once."""
        if name not in self.presets:
            raise KeyError(f"unknown preset {name!r}; valid presets: {', '.join(self.presets)}")
        overrides = self.presets[name]
        self._applying = True
        try:
            others = {k: v for k, v in overrides.items() if k not in self.controls}
            if others:
                self.config = replace(self.config, **others)
            for k, v in overrides.items():
                if k in self.controls:
                    self.controls[k].value = v
            if self.preset.value != name:
                self.preset.value = name
        finally:
            self._applying = False
        return self.update()

    def update(self) -> bool:
        """Re-run the experiment with the controls' values and redraw; False if it failed."""
        start = time.perf_counter()
        try:
            cfg = self.current_config()
            result = self._runner(cfg)
            figs = self._plot(result)
            figs = [figs] if isinstance(figs, go.Figure) else list(figs)
        except Exception as exc:  # the panel must survive a failing run
            self.last_error = exc
            self.last_time = time.perf_counter() - start
            self.status.value = (f"<span style='color:#b00020'>error: {html.escape(type(exc).__name__)}: "
                                 f"{html.escape(str(exc))}</span>")
            return False
        self.config, self.result, self.last_error = cfg, result, None
        self._draw(figs)
        self.last_time = time.perf_counter() - start
        self.status.value = f"<span style='color:#2e7d32'>ran in {self.last_time:.2f} s</span>"
        return True

    def _draw(self, figs: list[go.Figure]) -> None:
        if len(figs) != len(self.figures):
            self.figures = [go.FigureWidget(f) for f in figs]
            self._figure_box.children = tuple(self.figures)
            return
        for widget, fig in zip(self.figures, figs):
            same = len(widget.data) == len(fig.data) and all(
                a.type == b.type for a, b in zip(widget.data, fig.data))
            if not same:
                with widget.batch_update():
                    widget.data = ()
                widget.add_traces(list(fig.data))
                with widget.batch_update():
                    widget.layout = fig.layout
                continue
            with widget.batch_update():
                for old, new in zip(widget.data, fig.data):
                    old.update(new.to_plotly_json(), overwrite=True)
                widget.layout = fig.layout


def _markdown_to_html(text: str) -> str:
    """The claims' Markdown list as HTML (bold, italics and list items only)."""
    import re

    items = []
    for line in text.splitlines():
        line = html.escape(line.removeprefix("- "))
        line = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", line)
        line = re.sub(r"\*(.+?)\*", r"<i>\1</i>", line)
        items.append(f"<li>{line}</li>")
    return "<ul style='margin:0 0 4px 0'>" + "".join(items) + "</ul>"


def panel(experiment: str | Callable[[Any], Any], controls: Mapping[str, Any],
          plot: Plot | None = None, *, config: Any = None, run: bool = True,
          columns: int = 2, claims: Sequence[Any] = (),
          presets: Mapping[str, Mapping[str, Any]] | None = None) -> Panel:
    """Build a :class:`Panel`; see the module docstring for the control shorthands.

    Args:
        experiment: a registered experiment name, or any ``callable(cfg) -> History | Runs``
            (then ``config`` is required), e.g. a sweep over optimizers.
        controls: ``{config field: widget or shorthand}``.
        plot: ``result -> go.Figure`` or a list of figures; defaults to the experiment's plot.
        config: the base config (defaults to the experiment's default config).
        run: run once immediately so the panel opens with a plot.
        columns: controls per row.
        claims: :class:`lab.claims.Claim` objects of this panel: their sentences are shown above
            the controls, and their config/control become the presets "the paper's effect" and
            "the control".
        presets: further named scenarios ``{name: {field: value}}``; choosing one sets all its
            fields at once and runs once.
    """
    return Panel(experiment, controls, plot, config=config, run=run, columns=columns,
                 claims=claims, presets=presets)
