"""Progress bars for long runs, shown only where someone is watching.

Experiments loop with ``for step in progress.steps(n, desc="adam"):``. By default this is a plain
``range`` (tests, notebooks and benchmarks stay quiet). Inside ``with progress.enabled():`` (the
command line turns it on) it becomes a tqdm bar that appears only once a run has taken longer
than ``delay`` seconds, so short runs print nothing.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_STATE = {"on": False, "delay": 1.0}


@contextlib.contextmanager
def enabled(delay: float = 1.0) -> Iterator[None]:
    """Show tqdm bars for loops that run longer than ``delay`` seconds."""
    old = dict(_STATE)
    _STATE.update(on=True, delay=float(delay))
    try:
        yield
    finally:
        _STATE.update(old)


def track(iterable: Iterable[T], total: int | None = None, desc: str | None = None) -> Iterable[T]:
    """Wrap ``iterable`` in a delayed tqdm bar when progress is enabled."""
    if not _STATE["on"]:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, delay=_STATE["delay"], leave=False)


def steps(n: int, desc: str | None = None) -> Iterable[int]:
    """``range(n)``, with a delayed progress bar when enabled."""
    return track(range(n), total=n, desc=desc)
