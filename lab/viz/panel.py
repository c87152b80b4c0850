"""Interactive panels: controls bound to config fields, persistent FigureWidgets, re-run on change.

    panel("optimizer_on_surface",
          {"lr": (1e-3, 0.2, 1e-3), "surface": ["rosenbrock", "beale"], "steps": (10, 500, 10)})

A control spec is either an ipywidgets widget or a shorthand, read against the field's type:
``(lo, hi, step)`` -> IntSlider / FloatSlider, ``("log", lo_exp, hi_exp)`` -> FloatLogSlider,
a list of choices -> Dropdown, ``bool`` -> Checkbox, ``str`` -> Text. Every control has
``continuous_update=False``: the experiment re-runs when a slider is released.

**Latest wins.** In a Jupyter kernel a panel runs its experiment on a worker thread, so the
kernel stays free to receive further slider moves while a run is going. A panel runs at most
one experiment at a time: a change made during a run cancels it between two steps (through a
:func:`lab.progress.hook` that raises :class:`lab.progress.Cancelled`) and the changes coalesce
into one rerun with the latest values. All panels of a process share one run lock, so runs never
interleave on torch's global random generator. Figures and the status line are updated on the
kernel's main thread (the worker hands them over through the kernel's event loop), so widgets
are never touched from two threads. Outside a kernel (scripts, pytest) a panel runs synchronously
in the caller's thread; ``background=True`` forces the worker, with ``wait()`` to settle.

**Watching a run.** The status line says "running… (step k/N)" and a progress bar appears
after half a second. Experiments that hand their partial History to the progress loop
(``progress.steps(n, history=h)``, with ``flush=`` when the History is written at the end of
the run) stream: the figure is redrawn every few steps, inside ``batch_update()`` (the first
frame after ~0.1 s when the run took longer than the 150 ms target last time, else once it
passes 0.15 s, so a run that turns out slow still shows a frame within 300 ms), and the panel
gets pause / play / step buttons (play on a finished run replays it step by step). When loops
nest, the outermost one that hands over a History is the run's: a sweep whose loop over its
points passes a History of the points finished so far streams point by point, whatever the
runs inside it report. The previous run stays as a grey ghost trace for a before/after
comparison, a "defaults" button restores the opening config, and a run whose History reports
``meta["diverged"]`` or ``meta["warning"]`` is flagged in the warning colour.
Updates send only what changed (trace and layout properties are diffed against what the
browser already has).
"""
from __future__ import annotations

import dataclasses
import html
import math
import threading
import time
import weakref
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from lab import progress
from lab.experiments._base import field_docs, field_types, replace, run as run_experiment
from lab.history import History, Runs
from lab.registry import get

Plot = Callable[..., "go.Figure | Sequence[go.Figure]"]

OK_COLOR, WARN_COLOR, ERROR_COLOR, BUSY_COLOR = "#2e7d32", "#b26a00", "#b00020", "#555555"
SLOW_RUN_S = 0.15            # a run slower than this misses the 150 ms target: it streams early
FIRST_FRAME_S = 0.1          # a streaming run that took > SLOW_RUN_S last time draws its first frame after this
FIRST_FRAME_UNKNOWN_S = 0.15  # ... otherwise (a first run, or one that was fast) once it passes the target
FRAME_INTERVAL_S = 0.25      # ... and then at most every this long,
FRAME_COST_FACTOR = 4        # ... or this many times a frame's own cost (streaming costs <= 20 %)
PROGRESS_AFTER_S = 0.5       # the progress bar appears for runs longer than this
WATCH_FRAMES = 40            # frames of a replay ("watch") run
WATCH_FRAME_S = 0.05         # minimum time between two frames of a replay
GHOST_POINTS = 300           # ghost traces are thinned to at most this many points
GHOST_COLOR = "rgba(90, 90, 90, 0.35)"
GHOST_GROUP = "previous run"

_RUN_LOCK = threading.RLock()               # one experiment at a time in this process
_PANELS: "weakref.WeakSet[Panel]" = weakref.WeakSet()
_MISSING = object()


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


def _kernel_scheduler() -> Callable[[Callable[[], None]], None] | None:
    """``add_callback`` of the running IPython kernel's main event loop (thread-safe), or None."""
    try:
        from IPython import get_ipython
    except ImportError:                                     # pragma: no cover - IPython ships with ipywidgets
        return None
    shell = get_ipython()
    loop = getattr(getattr(shell, "kernel", None), "io_loop", None)
    return getattr(loop, "add_callback", None)


class _Job:
    """One requested run: its config, a cancel flag and what it has streamed so far."""

    def __init__(self, cfg: Any, *, watch: bool = False):
        self.cfg = cfg
        self.cancel = threading.Event()
        self.watch = watch                  # a replay: frames every few steps, paced
        self.t0 = 0.0
        self.seen: list[History] = []       # partial histories reported, in order
        self.last_frame = -math.inf
        self.frame_cost = 0.0
        self.frames = 0
        self.first_frame: float | None = None
        self.frame_k = -1                   # the step of the last frame
        self.last_status = -math.inf
        self.stream_failures = 0
        self.ghost: list[go.Figure] | None = None


class Panel(widgets.VBox):
    """Controls + one persistent ``go.FigureWidget`` per figure + a status line and a toolbar.

    Attributes: ``controls`` (field -> widget), ``figures`` (list of FigureWidget), ``status``
    (HTML line), ``config`` (the config of the last run), ``result`` (its History or Runs),
    ``last_error`` (the exception of the last run, or None), ``last_time`` (seconds of the last
    run: experiment + figures), ``timings`` (the last run's ``run``, ``plot``, ``draw`` seconds,
    its ``first_frame`` time and streamed ``frames``), ``runs`` (completed runs). Reading
    ``result``, ``config``, ``figures``, ``last_error`` or ``last_time`` waits for a run in
    progress (see :meth:`wait`).
    """

    def __init__(self, experiment: str | Callable[[Any], Any], controls: Mapping[str, Any],
                 plot: Plot | None = None, *, config: Any = None, run: bool = True,
                 columns: int = 2, claims: Sequence[Any] = (),
                 presets: Mapping[str, Mapping[str, Any]] | None = None,
                 background: bool | None = None, ghost: bool = True,
                 scheduler: Callable[[Callable[[], None]], None] | None = None):
        if isinstance(experiment, str):
            fn = get("experiment", experiment)
            self._runner = lambda cfg, _name=experiment: run_experiment(_name, cfg)
            config = fn.config() if config is None else config
            plot = plot or fn.plot
            self._named = True
        else:
            if config is None:
                raise TypeError("config is required when experiment is a callable")
            self._runner = experiment
            self._named = False
        if plot is None:
            from lab.viz.figures import history_figure
            plot = history_figure
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")
        self.experiment = experiment
        self._config = config
        self.defaults = config
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
        self._default_values = {k: w.value for k, w in self.controls.items()}
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

        # ---- status line and toolbar ---------------------------------------------------------
        self.status = widgets.HTML(value="")
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0,
                                              layout=widgets.Layout(width="140px", visibility="hidden"))
        button = dict(layout=widgets.Layout(width="auto"))
        self.reset_button = widgets.Button(description="↺ defaults", tooltip="every control back to "
                                           "the panel's opening values, and run", **button)
        self.pause_button = widgets.Button(description="⏸ pause", tooltip="pause the run", **button)
        self.play_button = widgets.Button(description="▶ replay", tooltip="resume, or replay the last "
                                          "run step by step", **button)
        self.step_button = widgets.Button(description="⏭ step", tooltip="advance a few steps", **button)
        self.ghost_toggle = widgets.Checkbox(value=bool(ghost), description="previous run (grey)",
                                             indent=False, layout=widgets.Layout(width="auto"))
        self._transport = widgets.HBox([self.pause_button, self.play_button, self.step_button],
                                       layout=widgets.Layout(display="none"))
        self.reset_button.on_click(lambda _: self.reset())
        self.pause_button.on_click(lambda _: self.pause())
        self.play_button.on_click(lambda _: self.play())
        self.step_button.on_click(lambda _: self.step())
        self.ghost_toggle.observe(self._on_ghost, names="value")
        toolbar = widgets.HBox([self.reset_button, self._transport, self.ghost_toggle, self.progress,
                                self.status], layout=widgets.Layout(align_items="center",
                                                                    flex_flow="row wrap"))

        # ---- run state -----------------------------------------------------------------------
        self._figures: list[go.FigureWidget] = []
        self._sent: list[tuple[list[dict], dict]] = []          # what each widget was last sent
        self._latest_figs: list[go.Figure] | None = None        # the last completed run's figures
        self._expected: float | None = None                     # the last run's seconds (streaming)
        self._shown: tuple[list[go.Figure], list[go.Figure] | None] | None = None
        self._result: Any = None
        self._last_error: BaseException | None = None
        self._last_time: float | None = None
        self.timings: dict[str, Any] = {}
        self.runs = 0
        self._shape: Any = None                                  # "history" or the Runs' labels
        self._streams = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: _Job | None = None
        self._job: _Job | None = None
        self._worker: threading.Thread | None = None
        self._ui: dict[str, Any] = {}
        self._ui_scheduled = False
        self._resume = threading.Event()
        self._resume.set()
        self._step_left: int | None = None                       # steps until a step() pauses
        if background is None:
            scheduler = scheduler or _kernel_scheduler()
            background = scheduler is not None
        self._background = bool(background)
        self._schedule = scheduler
        self._main_thread = threading.current_thread()

        boxes = list(self.controls.values())
        rows = [widgets.HBox(boxes[i:i + columns]) for i in range(0, len(boxes), columns)]
        self._figure_box = widgets.VBox([])
        super().__init__(header + rows + [toolbar, self._figure_box])
        self.add_class("lab-panel")                     # CSS hooks (the browser test finds panels by them)
        self.status.add_class("lab-panel-status")
        self._figure_box.add_class("lab-panel-figures")
        for widget in self.controls.values():
            widget.observe(self._on_change, names="value")
        self._refresh_buttons(running=False)
        self._refresh_active()
        _PANELS.add(self)
        if run:
            self._trigger()

    # ---- state that waits for a run in progress -------------------------------------------
    def _settled(self) -> None:
        if self._background and threading.current_thread() is not self._worker:
            self.wait()

    @property
    def result(self) -> Any:
        self._settled()
        return self._result

    @property
    def config(self) -> Any:
        self._settled()
        return self._config

    @config.setter
    def config(self, value: Any) -> None:
        self._config = value

    @property
    def figures(self) -> list[go.FigureWidget]:
        self._settled()
        return self._figures

    @property
    def last_error(self) -> BaseException | None:
        self._settled()
        return self._last_error

    @property
    def last_time(self) -> float | None:
        self._settled()
        return self._last_time

    @property
    def running(self) -> bool:
        """True while a run is in progress or queued."""
        with self._lock:
            return self._worker is not None

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
        return replace(self._config, **{k: w.value for k, w in self.controls.items()})

    def _refresh_active(self) -> None:
        """Grey out the controls that do nothing under the current values: the config's
        ``inactive_fields()`` (e.g. the responses beyond the group size of a calculator)."""
        if not callable(getattr(self._config, "inactive_fields", None)):
            return
        try:
            inactive = set(self.current_config().inactive_fields())
        except Exception:                          # an invalid combination: leave the controls as they are
            return
        for name, widget in self.controls.items():
            if hasattr(widget, "disabled"):
                widget.disabled = name in inactive

    def _on_change(self, change: Mapping[str, Any]) -> None:
        self._refresh_active()
        if self._applying:
            return
        if self.presets and self.preset.value != "(custom)":
            self._applying = True
            self.preset.value = "(custom)"
            self._applying = False
        self._resume_all()
        self._trigger()

    def _on_preset(self, change: Mapping[str, Any]) -> None:
        if self._applying or change["new"] == "(custom)":
            return
        self.apply_preset(change["new"])

    def _set_controls(self, values: Mapping[str, Any], others: Mapping[str, Any] | None = None) -> None:
        self._applying = True
        try:
            if others:
                self._config = replace(self._config, **others)
            for k, v in values.items():
                self.controls[k].value = v
        finally:
            self._applying = False
        self._refresh_active()

    def apply_preset(self, name: str) -> bool:
        """Set every control (and config field) the preset names at once, then run once.

        A preset applies on top of the panel's opening view: controls and config fields it does not
        name go back to their opening values, so a preset shows the same run whatever was moved
        before. Returns False if the run failed (in the background, True once the run is queued).
        """
        if name not in self.presets:
            raise KeyError(f"unknown preset {name!r}; valid presets: {', '.join(self.presets)}")
        overrides = self.presets[name]
        self._config = self.defaults
        self._set_controls({**self._default_values, **{k: v for k, v in overrides.items() if k in self.controls}},
                           {k: v for k, v in overrides.items() if k not in self.controls})
        self._applying = True
        try:
            if self.preset.value != name:
                self.preset.value = name
        finally:
            self._applying = False
        self._resume_all()
        return self._trigger()

    def reset(self) -> bool:
        """Every control back to the panel's opening value (and the opening config), then run once."""
        self._config = self.defaults
        self._set_controls(self._default_values)
        if self.presets:
            self._applying = True
            self.preset.value = "(custom)"
            self._applying = False
        self._resume_all()
        return self._trigger()

    def update(self) -> bool:
        """Re-run the experiment with the controls' values and redraw; False if it failed.

        This call waits for the run (a control change does not: it only queues the run).
        """
        if self._background:
            self._request(_Job(self.current_config()))
            self.wait()
            return self._last_error is None
        return self._run_sync(_Job(self.current_config()))

    def _trigger(self, job: _Job | None = None) -> bool:
        job = job or _Job(self.current_config())
        if self._background:
            self._request(job)
            return True
        return self._run_sync(job)

    # ---- play / pause / step --------------------------------------------------------------
    def pause(self) -> None:
        """Pause the run in progress at its next step (its figure shows the run so far)."""
        if self.running:
            self._resume.clear()
        self._refresh_buttons()

    def play(self) -> None:
        """Resume a paused run; on a finished run, replay it from the start, frame by frame."""
        if self.running:
            self._resume_all()
        else:
            self._resume_all()
            self._trigger(_Job(self._config, watch=True))
        self._refresh_buttons()

    def step(self) -> None:
        """Advance a paused run by one frame's worth of steps, then pause again (on a finished
        run: replay it and pause after the first frame)."""
        with self._lock:
            self._step_left = -1                 # the hook sets it to one frame's stride
        self._resume.set()
        if not self.running:
            self._trigger(_Job(self._config, watch=True))
        self._refresh_buttons()

    def _resume_all(self) -> None:
        with self._lock:
            self._step_left = None
        self._resume.set()

    def _refresh_buttons(self, running: bool | None = None) -> None:
        running = self.running if running is None else running
        paused = not self._resume.is_set()
        self.pause_button.disabled = not running or paused
        self.play_button.description = "▶ play" if running and paused else "▶ replay"
        self.play_button.disabled = running and not paused
        self.step_button.disabled = running and not paused
        self._transport.layout.display = "flex" if self._streams else "none"

    # ---- running --------------------------------------------------------------------------
    def _request(self, job: _Job) -> None:
        """Queue ``job`` (latest wins: a queued job is replaced, a running one is cancelled)."""
        with self._lock:
            self._pending = job
            if self._job is not None:
                self._job.cancel.set()
            start = self._worker is None
            if start:
                self._worker = threading.Thread(target=self._work, name="lab-panel", daemon=True)
        self._post(status=_span(BUSY_COLOR, "running…"), running=True)
        if threading.current_thread() is self._main_thread:
            self._drain()
        if start:
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                self._job = job
                if job is None:
                    self._worker = None
                    self._idle.notify_all()
            if job is None:
                self._post(running=False)
                return
            outcome = self._execute(job)
            if outcome is not None and not job.cancel.is_set():
                self._post(**outcome)

    def _run_sync(self, job: _Job) -> bool:
        outcome = self._execute(job)
        if outcome is not None:
            self._apply(outcome)
        self._refresh_buttons(running=False)
        return self._last_error is None

    def _execute(self, job: _Job) -> dict[str, Any] | None:
        """Run the experiment and build its figures; None when the job was cancelled."""
        job.ghost = self._latest_figs
        start = time.perf_counter()
        try:
            with _RUN_LOCK:
                job.t0 = time.perf_counter()
                with progress.hook(lambda frames: self._on_step(job, frames)):
                    result = self._runner(job.cfg)
                ran = time.perf_counter()
                figs = self._plot(result)
                figs = [figs] if isinstance(figs, go.Figure) else list(figs)
        except progress.Cancelled:
            return None
        except Exception as exc:  # the panel must survive a failing run
            elapsed = time.perf_counter() - start
            return dict(error=exc, elapsed=elapsed, status=_span(
                ERROR_COLOR, f"error: {type(exc).__name__}: {exc}"))
        done = time.perf_counter()
        timings = dict(run=ran - job.t0, plot=done - ran, wait=job.t0 - start,
                       first_frame=job.first_frame, frames=job.frames)
        elapsed = done - job.t0
        self._latest_figs = figs
        self._expected = ran - job.t0
        warnings = _warnings(result)
        if warnings:
            status = _span(WARN_COLOR, "⚠ " + "; ".join(warnings) + f" (ran in {elapsed:.2f} s)")
        else:
            status = _span(OK_COLOR, f"ran in {elapsed:.2f} s")
        return dict(figs=figs, ghost=job.ghost, result=result, cfg=job.cfg, error=None, elapsed=elapsed,
                    timings=timings, status=status, streams=bool(job.seen))

    def _on_step(self, job: _Job, frames: Sequence[progress.Frame]) -> None:
        """The progress hook on the worker: cancel, pause, report progress, stream frames."""
        if job.cancel.is_set():
            raise progress.Cancelled()
        for f in frames:            # the outermost loop that hands over a History is the run's: a
            if f.history is not None:       # sweep's History of finished points, not its runs' own
                if all(f.history is not h for h in job.seen):
                    job.seen.append(f.history)
                break
        now = time.perf_counter()
        elapsed = now - job.t0
        inner = frames[-1]
        if inner.history is not None and inner.n:
            stride = max(1, math.ceil(inner.n / WATCH_FRAMES))
            if job.watch and (inner.k % stride == 0 or inner.k == inner.n):
                time.sleep(max(0.0, WATCH_FRAME_S - (now - job.last_frame)))
                self._frame(job, inner.k, frames)
            elif not job.watch and elapsed >= (FIRST_FRAME_S if (self._expected or 0.0) > SLOW_RUN_S
                                               else FIRST_FRAME_UNKNOWN_S) and \
                    now - job.last_frame >= max(FRAME_INTERVAL_S, FRAME_COST_FACTOR * job.frame_cost):
                self._frame(job, inner.k, frames)
            while True:                               # step(): run `stride` steps, then pause
                with self._lock:
                    if self._step_left is not None:
                        self._step_left = stride if self._step_left < 0 else self._step_left
                        if self._step_left == 0:
                            self._step_left = None
                            self._resume.clear()
                        else:
                            self._step_left -= 1
                if self._resume.is_set():
                    break
                self._pause_here(job, frames)
        if now - job.last_status >= 0.1 and elapsed >= 0.05:
            job.last_status = now
            self._post(status=_span(BUSY_COLOR, "running… (" + _describe(frames, job, self._shape) + ")"),
                       progress=_fraction(frames, job, self._shape) if elapsed >= PROGRESS_AFTER_S else None)

    def _pause_here(self, job: _Job, frames: Sequence[progress.Frame]) -> None:
        """Block the run (between two steps) until play/step, or until it is cancelled."""
        if job.frame_k != frames[-1].k:
            self._frame(job, frames[-1].k, frames)
        self._post(status=_span(BUSY_COLOR, "paused (" + _describe(frames, job, self._shape) + ")"),
                   paused=True)
        while not self._resume.wait(0.05):
            if job.cancel.is_set():
                raise progress.Cancelled()
        self._post(paused=False)

    def _frame(self, job: _Job, k: int, frames: Sequence[progress.Frame] = ()) -> None:
        if job.stream_failures >= 3:            # a plot that needs the finished run: no frames
            return
        for f in frames:                        # runs that write their History at the end: the steps so far
            if f.flush is not None and f.history is not None:
                f.flush()
        partial = self._partial(job)
        if partial is None or not _histories(partial) or not all(len(h) for _, h in _histories(partial)):
            return
        start = time.perf_counter()
        try:
            figs = self._plot(partial)
            figs = [figs] if isinstance(figs, go.Figure) else list(figs)
        except Exception:
            job.stream_failures += 1
            return
        job.frame_cost = time.perf_counter() - start
        job.frame_k = k
        job.last_frame = time.perf_counter()
        job.frames += 1
        if job.first_frame is None:
            job.first_frame = job.last_frame - job.t0
        self._post(figs=figs, ghost=job.ghost, frame=True)

    def _partial(self, job: _Job) -> History | Runs | None:
        """The run so far, shaped like the finished result (a History, or Runs by label).

        Runs hold the runs that have rows so far: a comparison whose runs write their History
        at their end (one sync at the end on a GPU) streams run by run, the first frame
        showing the first finished run.
        """
        if not job.seen:
            return None
        shape = self._shape
        if isinstance(shape, tuple):
            if len(job.seen) > len(shape):
                return None
            return Runs((label, h) for label, h in zip(shape, job.seen) if len(h))
        if shape == "history" or self._named:
            h = job.seen[-1]
            if self._named:
                h.meta.setdefault("config", dataclasses.asdict(job.cfg))
            return h
        return Runs({str(h.meta.get("algorithm", i)): h for i, h in enumerate(job.seen) if len(h)})

    # ---- handing results to the main thread ------------------------------------------------
    def _post(self, **ui: Any) -> None:
        if not self._background or threading.current_thread() is self._main_thread and not self._worker:
            self._apply(ui)
            return
        with self._lock:
            if "figs" in ui:                        # newer figures replace older ones whole
                for key in ("frame", "ghost", "timings"):
                    self._ui.pop(key, None)
            self._ui.update(ui)
            schedule = self._schedule is not None and not self._ui_scheduled
            self._ui_scheduled = self._ui_scheduled or schedule
        if schedule:
            self._schedule(self._drain)

    def _drain(self) -> None:
        """Apply the latest handed-over state to the widgets (on the main thread)."""
        with self._lock:
            ui, self._ui = self._ui, {}
            self._ui_scheduled = False
        if ui:
            self._apply(ui)

    def _apply(self, ui: Mapping[str, Any]) -> None:
        if "result" in ui:
            self._result, self._config = ui["result"], ui["cfg"]
            self._shape = "history" if isinstance(ui["result"], History) else tuple(ui["result"])
            self.runs += 1
        if "error" in ui:
            self._last_error = ui["error"]
            self._last_time = ui.get("elapsed")
        if ui.get("streams"):
            self._streams = True
        if ui.get("figs") is not None:
            start = time.perf_counter()
            ghost = ui.get("ghost") if self.ghost_toggle.value else None
            self._draw(ui["figs"], ghost)
            draw = time.perf_counter() - start
            if "timings" in ui:
                self.timings = dict(ui["timings"], draw=draw)
        if "status" in ui:
            self.status.value = ui["status"]
        if "progress" in ui:
            value = ui["progress"]
            self.progress.layout.visibility = "hidden" if value is None else "visible"
            self.progress.value = 0.0 if value is None else float(value)
        if "running" in ui or "result" in ui or "error" in ui or "paused" in ui:
            running = self.running
            if not running:
                self.progress.layout.visibility = "hidden"
            self._refresh_buttons(running=running)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run in progress (and any queued one), then draw its result here.

        Returns False if ``timeout`` (seconds) passed first. Call it from the thread that owns
        the widgets (a notebook cell, a test); reading ``result`` does it for you.
        """
        if threading.current_thread() is self._worker:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                worker = self._worker
            if worker is None:
                break
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                return False
        self._drain()
        return True

    # ---- drawing --------------------------------------------------------------------------
    def _on_ghost(self, change: Mapping[str, Any]) -> None:
        if self._shown is not None:
            self._draw(self._shown[0], self._shown[1] if change["new"] else None)

    def _draw(self, figs: list[go.Figure], ghost: list[go.Figure] | None = None) -> None:
        self._shown = (figs, ghost)
        data = [_traces(fig, ghost[i] if ghost and i < len(ghost) else None) for i, fig in enumerate(figs)]
        layouts = [jsonable(fig.layout.to_plotly_json()) for fig in figs]
        if len(figs) != len(self._figures):
            self._figures = [go.FigureWidget(data=d, layout=lay) for d, lay in zip(data, layouts)]
            self._sent = [(d, lay) for d, lay in zip(data, layouts)]
            self._figure_box.children = tuple(self._figures)
            return
        for i, (widget, traces, layout) in enumerate(zip(self._figures, data, layouts)):
            old_traces, old_layout = self._sent[i]
            same = len(traces) == len(old_traces) and all(
                a.get("type") == b.get("type") for a, b in zip(traces, old_traces))
            if not same:
                with widget.batch_update():
                    widget.data = ()
                widget.add_traces(traces)
                with widget.batch_update():
                    for path, value in _diff(old_layout, layout).items():
                        widget.layout[path] = value
            else:
                with widget.batch_update():
                    for trace, old, new in zip(widget.data, old_traces, traces):
                        for path, value in _diff(old, new).items():
                            trace[path] = value
                    for path, value in _diff(old_layout, layout).items():
                        widget.layout[path] = value
            self._sent[i] = (traces, layout)


# ---- helpers ----------------------------------------------------------------------------------
def _span(color: str, text: str) -> str:
    return f"<span style='color:{color}'>{html.escape(text)}</span>"


def _histories(result: Any) -> list[tuple[str, History]]:
    if isinstance(result, History):
        return [(str(result.meta.get("algorithm", "run")), result)]
    if isinstance(result, Mapping):
        return [(str(k), h) for k, h in result.items() if isinstance(h, History)]
    return []


def _warnings(result: Any) -> list[str]:
    """What the run's Histories report: ``meta["diverged"]`` (the step) and ``meta["warning"]``."""
    found = []
    runs = _histories(result)
    for label, h in runs:
        prefix = f"{label}: " if len(runs) > 1 else ""
        diverged = h.meta.get("diverged")
        if diverged is not None and diverged is not False:
            at = f" at step {diverged}" if isinstance(diverged, (int, float)) and not isinstance(diverged, bool) else ""
            found.append(f"{prefix}diverged{at}")
        if h.meta.get("warning"):
            found.append(f"{prefix}{h.meta['warning']}")
    return found


def _describe(frames: Sequence[progress.Frame], job: _Job, shape: Any) -> str:
    parts = []
    if isinstance(shape, tuple) and len(shape) > 1 and job.seen and len(frames) == 1:
        parts.append(f"run {len(job.seen)}/{len(shape)}")
    for depth, f in enumerate(frames):
        total = f"/{f.n}" if f.n else ""
        if depth == len(frames) - 1:
            name = f"{f.desc} · " if f.desc and len(frames) == 1 else ""
            parts.append(f"{name}step {min(f.k, f.n or f.k)}{total}")
        else:
            parts.append(f"{f.desc or 'loop'} {min(f.k + 1, f.n or f.k + 1)}{total}")
    return " · ".join(parts)


def _fraction(frames: Sequence[progress.Frame], job: _Job, shape: Any) -> float:
    frac = 0.0
    for f in reversed(frames):
        if not f.n:
            return frac
        frac = min(1.0, (f.k + frac) / f.n)
    if isinstance(shape, tuple) and len(shape) > 1 and job.seen and len(frames) == 1:
        frac = min(1.0, (len(job.seen) - 1 + frac) / len(shape))
    return frac


def _equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        try:
            x, y = np.asarray(a), np.asarray(b)
            return x.shape == y.shape and x.dtype.kind == y.dtype.kind and bool(
                np.array_equal(x, y, equal_nan=x.dtype.kind == "f"))
        except (TypeError, ValueError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` of what changed from ``old`` to ``new``; removed keys map to None."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        path = prefix + key
        before = old.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(before, dict) and key != "template":
            out.update(_diff(before, value, path + "."))
        elif before is _MISSING or not _equal(before, value):
            out[path] = value
    for key in old:
        if key not in new:
            out[prefix + key] = None
    return out


def jsonable(value: Any) -> Any:
    """A figure's JSON made safe and light for the widget channel (what the panel sends).

    ipywidgets sends numpy arrays of one dimension as binary buffers and everything else as
    strict JSON, where NaN and infinity are errors ("Out of range float values are not JSON
    compliant"). Here: NaN and ±inf inside 2-D arrays and lists become ``None`` (a gap); ±inf in 1-D
    arrays becomes NaN (a gap); numeric lists and int64 arrays become float arrays, so that they
    travel as binary buffers.
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            finite = np.isfinite(value)
            if finite.all():
                return value
            if value.ndim == 1:
                return np.where(finite, value, np.nan)
            out = value.astype(object)
            out[~finite] = None
            return out.tolist()
        if value.dtype.kind in "iub" and value.ndim == 1 and value.size and np.abs(value).max() < 2 ** 53:
            return value.astype(np.float64)
        if value.dtype.kind == "O":
            return [jsonable(v) for v in value.tolist()]
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) > 8 and all(type(v) in (int, float) for v in value):
            return jsonable(np.asarray(value, dtype=np.float64))
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return value


def _thin(values: Any, n: int) -> Any:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) <= n:
        return arr
    idx = np.unique(np.linspace(0, len(arr) - 1, n).round().astype(int))
    return arr[idx]


def _traces(fig: go.Figure, ghost: go.Figure | None) -> list[dict]:
    """The figure's traces as plotly JSON, after the grey ghosts of the previous run's lines."""
    traces = [jsonable(t.to_plotly_json()) for t in fig.data]
    if ghost is None:
        return traces
    axes = {(t.get("xaxis"), t.get("yaxis")) for t in traces}
    ghosts, first = [], True
    for t in ghost.data:
        if t.type not in ("scatter", "scattergl") or (t.xaxis, t.yaxis) not in axes or t.x is None or t.y is None:
            continue
        mode = t.mode or "lines"
        if "lines" not in mode:
            continue
        x, y = _thin(t.x, GHOST_POINTS), _thin(t.y, GHOST_POINTS)
        if x is None or y is None or len(x) != len(y):
            continue
        g = dict(type="scatter", x=x, y=y, mode="lines", name=GHOST_GROUP, legendgroup=GHOST_GROUP,
                 showlegend=first, hoverinfo="skip",
                 line=dict(color=GHOST_COLOR, width=1.5, dash=t.line.dash or "solid"))
        if t.xaxis:
            g["xaxis"] = t.xaxis
        if t.yaxis:
            g["yaxis"] = t.yaxis
        ghosts.append(jsonable(g))
        first = False
    at = next((i for i, t in enumerate(traces) if t.get("type") in ("scatter", "scattergl")), len(traces))
    return traces[:at] + ghosts + traces[at:]       # above filled contours/heatmaps, below the lines


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


def live_panels() -> list[Panel]:
    """Every panel of this process that is still alive."""
    return list(_PANELS)


def wait_all(timeout: float | None = None) -> list[tuple[Panel, BaseException]]:
    """Wait for every live panel's runs; returns ``(panel, error)`` for each whose last run failed."""
    failed = []
    for p in live_panels():
        p.wait(timeout)
        if p._last_error is not None:
            failed.append((p, p._last_error))
    return failed


def check_panels(timeout: float | None = None) -> int:
    """Wait for every live panel and raise ``RuntimeError`` listing those whose last run failed.

    The headless notebook tests end with this (panels run in the background in a kernel, so a
    failing run shows in its status line, not as a cell error). Returns the number of panels.
    """
    failed = wait_all(timeout)
    if failed:
        lines = [f"{p.experiment if isinstance(p.experiment, str) else getattr(p.experiment, '__name__', p.experiment)}: "
                 f"{type(e).__name__}: {e}" for p, e in failed]
        raise RuntimeError("panel run(s) failed:\n" + "\n".join(lines))
    return len(live_panels())


def panel(experiment: str | Callable[[Any], Any], controls: Mapping[str, Any],
          plot: Plot | None = None, *, config: Any = None, run: bool = True,
          columns: int = 2, claims: Sequence[Any] = (),
          presets: Mapping[str, Mapping[str, Any]] | None = None,
          background: bool | None = None, ghost: bool = True) -> Panel:
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
        background: run on a worker thread (latest wins, streaming); default: when inside a
            Jupyter kernel.
        ghost: show the previous run as grey traces (a checkbox toggles it).
    """
    return Panel(experiment, controls, plot, config=config, run=run, columns=columns,
                 claims=claims, presets=presets, background=background, ghost=ghost)
