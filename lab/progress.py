"""Progress of long runs: tqdm bars where someone is watching, and hooks for live panels.

Experiments loop with ``for step in progress.steps(n, desc="adam", history=h):``. By default this
is a plain ``range`` (tests, notebooks and benchmarks stay quiet, at no cost). Two things can
watch it:

- ``with progress.enabled():`` (the command line turns it on) shows a tqdm bar that appears only
  once a run has taken longer than ``delay`` seconds, so short runs print nothing;
- ``with progress.hook(fn):`` calls ``fn(frames)`` at the start of every iteration of every
  progress loop run *on this thread* (a live panel runs its experiment on a worker thread with
  a hook installed). ``frames`` is the stack of open loops, outermost first, each a
  :class:`Frame` ``(desc, k, n, history)``: iteration ``k`` of ``n`` is about to run, and
  ``history`` is the run's partial :class:`~lab.history.History` when the experiment handed it
  over (its rows are the steps done so far), so the panel can redraw the run as it goes. A hook
  may block (pause) and may raise :class:`Cancelled` to stop the run between two steps; the
  exception derives from ``BaseException`` so an experiment's ``except Exception`` does not
  swallow it. After the last iteration the hook is called once more with ``k == n``.

An experiment that keeps its per-step values on the device and writes the History once at the
end (one sync instead of one per step) passes ``flush=``: a callable that writes the steps run so
far into the History. A live panel calls it (between two steps) just before it draws a frame, so
the run streams while it is watched and costs nothing more otherwise; ``flush`` must write each
step once and leave the History exactly as the end-of-run write would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
_STATE = {"on": False, "delay": 1.0}
_LOCAL = threading.local()          # .hooks: installed callables; .stack: open loops (Frames)


class Cancelled(BaseException):
    """Raised by a progress hook to stop a run between two steps (e.g. a newer run was asked for)."""


@dataclasses.dataclass
class Frame:
    """One open progress loop: iteration ``k`` of ``n`` (``n`` None when unknown) is next."""

    desc: str | None
    k: int
    n: int | None
    history: Any = None             # the run's partial History, when the experiment passed it
    flush: Callable[[], None] | None = None   # writes the steps run so far into ``history``


@contextlib.contextmanager
def enabled(delay: float = 1.0) -> Iterator[None]:
    """Show tqdm bars for loops that run longer than ``delay`` seconds."""
    old = dict(_STATE)
    _STATE.update(on=True, delay=float(delay))
    try:
        yield
    finally:
        _STATE.update(old)


@contextlib.contextmanager
def hook(fn: Callable[[Sequence[Frame]], None]) -> Iterator[None]:
    """Call ``fn(frames)`` before every iteration of every progress loop on this thread."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    hooks = getattr(_LOCAL, "hooks", None)
    if hooks is None:
        hooks = _LOCAL.hooks = []
        _LOCAL.stack = []
    hooks.append(fn)
    try:
        yield
    finally:
        hooks.remove(fn)


def _hooked(iterable: Iterable[T], total: int | None, desc: str | None, history: Any,
            flush: Callable[[], None] | None) -> Iterator[T]:
    hooks, stack = _LOCAL.hooks, _LOCAL.stack
    frame = Frame(desc, 0, total, history, flush)
    stack.append(frame)
    try:
        for k, item in enumerate(iterable):
            frame.k = k
            for fn in list(hooks):
                fn(tuple(stack))
            yield item
        frame.k = frame.n if frame.n is not None else frame.k + 1
        for fn in list(hooks):
            fn(tuple(stack))
    finally:
        stack.remove(frame)


def track(iterable: Iterable[T], total: int | None = None, desc: str | None = None,
          history: Any = None, flush: Callable[[], None] | None = None) -> Iterable[T]:
    """Wrap ``iterable`` in a delayed tqdm bar when progress is enabled, and report each
    iteration (with ``history``, the run's partial History, if given, and ``flush``, which
    writes the steps run so far into it) to this thread's hooks."""
    if flush is not None and not callable(flush):
        raise TypeError(f"flush must be callable, got {type(flush).__name__}")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if _STATE["on"]:
        from tqdm.auto import tqdm

        iterable = tqdm(iterable, total=total, desc=desc, delay=_STATE["delay"], leave=False)
    if getattr(_LOCAL, "hooks", None):
        return _hooked(iterable, total, desc, history, flush)
    return iterable


def steps(n: int, desc: str | None = None, history: Any = None,
          flush: Callable[[], None] | None = None) -> Iterable[int]:
    """``range(n)``, with a delayed progress bar when enabled; ``history`` (the run's partial
    History) lets a live panel redraw the run while it goes, and ``flush`` (see the module
    docstring) writes the steps run so far into it for a run that writes its History at the end."""
    return track(range(n), total=n, desc=desc, history=history, flush=flush)


__all__ = ["Cancelled", "Frame", "enabled", "hook", "steps", "track"]
