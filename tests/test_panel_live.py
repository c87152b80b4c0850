"""Live panels: latest wins, cancellation between steps, streaming, pause/step, ghosts, reset.

The panel's worker thread is driven deterministically: the toy experiment blocks on events the
test controls, and the kernel's event loop is replaced by a list of callbacks the test runs.
"""
import dataclasses
import importlib
import threading

import numpy as np
import pytest

from lab import progress
from lab.history import History
from lab.viz.figures import curves
from lab.viz.panel import Panel, panel

panel_mod = importlib.import_module("lab.viz.panel")   # the module (lab.viz.panel is also the function)


@dataclasses.dataclass(frozen=True)
class Cfg:
    x: float = 0.0           # a value the run records
    steps: int = 5           # steps of the run


class Toy:
    """An experiment whose steps wait for ``gate``; records which configs started and finished."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.started, self.finished = [], []

    def __call__(self, cfg):
        self.started.append(cfg.x)
        self.entered.set()
        h = History(meta={"algorithm": "toy"})
        for k in progress.steps(cfg.steps, desc="toy", history=h):
            assert self.gate.wait(10), "the test never opened the gate"
            h.append(k, y=cfg.x * k)
        self.finished.append(cfg.x)
        return h


def _plot(h):
    return curves(h, "y")


class Loop:
    """Stands in for the kernel's event loop: callbacks handed over by the worker, run on demand."""

    def __init__(self):
        self.callbacks = []

    def __call__(self, fn):
        self.callbacks.append(fn)

    def run(self):
        while self.callbacks:
            self.callbacks.pop(0)()


def test_changes_during_a_run_coalesce_into_one_rerun_with_the_latest_values():
    toy, loop = Toy(), Loop()
    p = Panel(toy, {"x": (0.0, 10.0, 1.0)}, _plot, config=Cfg(), background=True, scheduler=loop)
    assert toy.entered.wait(10)                  # the first run is inside its first step
    assert p.running and "running" in p.status.value
    for value in (1.0, 2.0, 3.0):                # three slider moves while it runs
        p.controls["x"].value = value
    toy.gate.set()
    assert p.wait(10)
    assert toy.started == [0.0, 3.0], "the stale run is cancelled, 1 and 2 never start"
    assert toy.finished == [3.0]
    assert p.runs == 1 and p.config.x == 3.0 and list(p.result["y"]) == [0, 3, 6, 9, 12]
    assert "ran in" in p.status.value and not p.running
    loop.run()                                   # late callbacks change nothing
    assert list(p.figures[0].data[0].y) == [0, 3, 6, 9, 12]


def test_a_queued_change_waits_for_the_run_and_only_the_last_one_runs():
    toy, loop = Toy(), Loop()
    p = Panel(toy, {"x": (0.0, 10.0, 1.0)}, _plot, config=Cfg(steps=1), background=True, scheduler=loop)
    assert toy.entered.wait(10)
    toy.gate.set()
    assert p.wait(10) and toy.finished == [0.0]
    toy.gate.clear()
    toy.entered.clear()
    p.controls["x"].value = 4.0
    assert toy.entered.wait(10)
    p.controls["x"].value = 5.0
    p.controls["x"].value = 6.0
    toy.gate.set()
    p.wait(10)
    assert toy.started == [0.0, 4.0, 6.0] and toy.finished == [0.0, 6.0]
    assert p.config.x == 6.0 and p.runs == 2


def test_results_reach_the_widgets_only_through_the_main_loop():
    toy, loop = Toy(), Loop()
    toy.gate.set()
    p = Panel(toy, {"x": (0.0, 10.0, 1.0)}, _plot, config=Cfg(), background=True, scheduler=loop)
    while p.running:                             # the worker finishes without touching widgets
        threading.Event().wait(0.01)
    assert p._figures == [] and loop.callbacks, "figures are drawn by the main loop's callback"
    loop.run()
    assert len(p._figures) == 1 and "ran in" in p.status.value


def test_long_runs_stream_frames_while_they_go(monkeypatch):
    monkeypatch.setattr(panel_mod, "FIRST_FRAME_S", 0.0)
    monkeypatch.setattr(panel_mod, "FIRST_FRAME_UNKNOWN_S", 0.0)
    monkeypatch.setattr(panel_mod, "FRAME_INTERVAL_S", 0.0)
    monkeypatch.setattr(panel_mod, "FRAME_COST_FACTOR", 0.0)
    lengths = []

    def plot(h):
        lengths.append(len(h))
        return curves(h, "y")

    toy = Toy()
    toy.gate.set()
    p = panel(toy, {"x": (0.0, 10.0, 1.0)}, plot, config=Cfg(x=1.0, steps=6))
    assert lengths[:-1] == sorted(lengths[:-1]) and len(lengths) > 3, "frames of a growing run"
    assert lengths[0] < 6 and lengths[-1] == 6
    assert p.timings["frames"] == len(lengths) - 1 and p.timings["first_frame"] is not None
    assert p._transport.layout.display == "flex", "a streaming run gets play/pause/step"


def test_a_comparison_whose_runs_write_at_their_end_streams_run_by_run(monkeypatch):
    """Runs of several configs, each History filled after its loop (as a GPU-friendly experiment
    does): the first frame shows the first finished run while the second one is going."""
    from lab.history import Runs

    monkeypatch.setattr(panel_mod, "FIRST_FRAME_S", 0.0)
    monkeypatch.setattr(panel_mod, "FIRST_FRAME_UNKNOWN_S", 0.0)
    monkeypatch.setattr(panel_mod, "FRAME_INTERVAL_S", 0.0)
    monkeypatch.setattr(panel_mod, "FRAME_COST_FACTOR", 0.0)
    shown = []

    def compare(cfg):
        runs = Runs()
        for name in ("a", "b", "c"):
            h = History(meta={"algorithm": name})
            for _ in progress.steps(cfg.steps, desc=name, history=h):
                pass
            for k in range(cfg.steps):                   # written at the end of the run
                h.append(k, y=cfg.x * k)
            runs[name] = h
        return runs

    def plot(runs):
        shown.append(tuple(runs))
        return curves(runs, "y")

    p = panel(compare, {"x": (0.0, 10.0, 1.0)}, plot, config=Cfg(x=1.0, steps=4))
    for _ in range(2):                                   # the first run, then one that knows the labels
        frames = shown[:-1]
        assert ("a",) in frames and ("a", "b") in frames, f"frames while the runs go: {frames}"
        assert shown[-1] == ("a", "b", "c") and p.timings["first_frame"] is not None
        shown.clear()
        p.update()


def test_pause_step_and_play_on_a_streaming_run(monkeypatch):
    monkeypatch.setattr(panel_mod, "WATCH_FRAME_S", 0.0)
    toy, loop = Toy(), Loop()
    toy.gate.set()
    p = Panel(toy, {"x": (0.0, 10.0, 1.0)}, _plot, config=Cfg(x=1.0, steps=10), background=True,
              scheduler=loop)
    p.wait(10)
    paused = threading.Event()
    original = p._pause_here

    def pause_here(job, frames):
        paused.set()
        original(job, frames)

    p._pause_here = pause_here
    p.step()                                     # a finished run: replay, pause after one frame
    assert paused.wait(10)
    loop.run()
    assert "paused" in p.status.value and len(p._figures[0].data[-1].y) == 1
    paused.clear()
    p.step()                                     # one more step
    assert paused.wait(10)
    loop.run()
    assert len(p._figures[0].data[-1].y) == 2 and p.running
    p.play()
    assert p.wait(10)
    assert len(p.figures[0].data[-1].y) == 10 and "ran in" in p.status.value


def test_a_paused_run_is_cancelled_by_a_change():
    toy, loop = Toy(), Loop()
    p = Panel(toy, {"x": (0.0, 10.0, 1.0)}, _plot, config=Cfg(), background=True, scheduler=loop)
    assert toy.entered.wait(10)
    p.pause()
    toy.gate.set()
    p.controls["x"].value = 7.0                  # a change resumes and replaces the paused run
    assert p.wait(10)
    assert toy.finished == [7.0] and p.config.x == 7.0


def test_previous_run_ghost_and_reset_to_defaults():
    toy = Toy()
    toy.gate.set()
    p = panel(toy, {"x": (0.0, 10.0, 1.0)}, _plot, config=Cfg(x=2.0))
    fig = p.figures[0]
    assert [t.name for t in fig.data] == ["toy"], "no ghost before a second run"
    p.controls["x"].value = 5.0
    ghosts = [t for t in fig.data if t.legendgroup == "previous run"]
    assert len(ghosts) == 1 and list(ghosts[0].y) == [0, 2, 4, 6, 8]
    assert list(fig.data[-1].y) == [0, 5, 10, 15, 20]
    p.ghost_toggle.value = False
    assert [t.name for t in fig.data] == ["toy"]
    p.reset()
    assert p.controls["x"].value == 2.0 and p.config.x == 2.0 and list(fig.data[-1].y) == [0, 2, 4, 6, 8]


def test_status_warns_on_divergence_and_on_a_reported_warning():
    def experiment(cfg):
        h = History(meta={"algorithm": "sgd"})
        h.append(0, y=1.0)
        if cfg.x > 5:
            h.meta["diverged"] = 3 if cfg.x < 8 else 0        # step 0 is a divergence too
        if cfg.x < 0:
            h.meta["warning"] = "nothing was clipped"
        return h

    p = panel(experiment, {"x": (-10.0, 10.0, 1.0)}, _plot, config=Cfg())
    assert panel_mod.OK_COLOR in p.status.value and "ran in" in p.status.value
    p.controls["x"].value = 6.0
    assert panel_mod.WARN_COLOR in p.status.value and "diverged at step 3" in p.status.value
    assert panel_mod.OK_COLOR not in p.status.value
    p.controls["x"].value = 9.0
    assert "diverged at step 0" in p.status.value
    p.controls["x"].value = -1.0
    assert "nothing was clipped" in p.status.value and panel_mod.WARN_COLOR in p.status.value


def test_redraws_send_only_what_changed():
    sent = []

    def experiment(cfg):
        h = History(meta={"algorithm": "run"})
        for k in range(50):
            h.append(k, y=cfg.x * k)
        return h

    p = panel(experiment, {"x": (0.0, 10.0, 1.0)}, _plot, config=Cfg(x=1.0), ghost=False)
    fig = p.figures[0]
    original = fig._send_update_msg

    def spy(restyle_data, relayout_data, trace_indexes=None, **kw):
        sent.append((restyle_data, relayout_data))
        return original(restyle_data=restyle_data, relayout_data=relayout_data,
                        trace_indexes=trace_indexes, **kw)

    fig._send_update_msg = spy
    p.controls["x"].value = 2.0
    (restyle, relayout), = sent
    assert set(restyle) == {"y"}, "x, names and styles are unchanged: not resent"
    assert "template" not in relayout
    np.testing.assert_array_equal(fig.data[0].y, 2.0 * np.arange(50))


def test_a_property_the_new_figure_drops_is_reset():
    def plot(h):
        fig = curves(h, "y")
        if h["y"][-1] > 100:
            fig.update_yaxes(type="log", title_text="y (log)")
            fig.update_layout(title="large")
        return fig

    def experiment(cfg):
        h = History(meta={"algorithm": "run"})
        for k in range(1, 50):
            h.append(k, y=cfg.x * k)
        return h

    p = panel(experiment, {"x": (0.0, 10.0, 1.0)}, plot, config=Cfg(x=1.0), ghost=False)
    fig = p.figures[0]
    assert fig.layout.yaxis.type is None and fig.layout.title.text is None
    p.controls["x"].value = 5.0
    assert fig.layout.yaxis.type == "log" and fig.layout.title.text == "large"
    p.controls["x"].value = 1.0
    assert fig.layout.yaxis.type is None and fig.layout.title.text is None, "stale layout keys are cleared"
    assert fig.layout.yaxis.title.text == "y"


def test_progress_hook_sees_nested_loops_and_cancels_between_steps():
    seen = []
    h = History()

    def hook(frames):
        seen.append(tuple((f.desc, f.k, f.n, f.history is h) for f in frames))
        if frames[-1].desc == "inner" and frames[-1].k == 2 and frames[0].k == 1:
            raise progress.Cancelled()

    done = []
    with progress.hook(hook), pytest.raises(progress.Cancelled):
        for i in progress.track(["a", "b"], desc="outer"):
            for k in progress.steps(3, desc="inner", history=h):
                done.append((i, k))
    assert done == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert seen[0] == (("outer", 0, 2, False),)
    assert seen[1] == (("outer", 0, 2, False), ("inner", 0, 3, True))
    assert (("outer", 0, 2, False), ("inner", 3, 3, True)) in seen, "the end of a loop is reported"
    assert not issubclass(progress.Cancelled, Exception), "except Exception must not swallow it"
    assert list(progress.steps(3)) == [0, 1, 2] and isinstance(progress.steps(3), range), \
        "without a hook, steps() stays a plain range"


def test_check_panels_reports_a_failed_run():
    def broken(cfg):
        raise ValueError("x must be positive")

    p = panel(broken, {"x": (0.0, 10.0, 1.0)}, _plot, config=Cfg())
    with pytest.raises(RuntimeError, match="x must be positive"):
        panel_mod.check_panels()
    del p


def test_registry_discovery_is_safe_from_two_threads():
    """A panel's first run imports modules on its worker while the next cell looks names up."""
    import subprocess
    import sys

    code = ("import threading, lab.registry as r\n"
            "out = {}\n"
            "def look(i): out[i] = len(r.available('advantage'))\n"
            "ts = [threading.Thread(target=look, args=(i,)) for i in range(3)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(out[0], out[1], out[2], len(r.available('advantage')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    counts = [int(v) for v in out.stdout.split()]
    assert counts[-1] > 5 and len(set(counts)) == 1, counts


def test_controls_that_do_not_apply_are_greyed_out():
    from lab.viz.rl import CalculatorConfig, advantage_calculator, calculator_figures

    p = panel(advantage_calculator, {**{f"r{i}": bool for i in range(8)}, "group_size": (2, 8, 1)},
              calculator_figures, config=CalculatorConfig(group_size=6))
    assert [p.controls[f"r{i}"].disabled for i in range(8)] == [False] * 6 + [True] * 2
    p.controls["group_size"].value = 3
    assert [p.controls[f"r{i}"].disabled for i in range(8)] == [False] * 3 + [True] * 5
    assert len(p.result["rewards"]) == 3
