"""The registry: every algorithm in the lab, found by ``(kind, name)``.

Each algorithm registers itself with the paper it comes from::

    @register("optimizer", "lion", paper="Symbolic Discovery of Optimization Algorithms",
              arxiv="2302.06675")
    class Lion(torch.optim.Optimizer): ...

    make("optimizer", "lion", model.parameters(), lr=1e-4)
    available("optimizer")          # ['adabelief', 'adam', ..., 'lion', ...]
    info("optimizer", "lion").paper

Registration happens when a module is imported; :func:`available`, :func:`make` and :func:`info`
first import every module of the ``lab`` package once (:func:`discover`), so nothing has to be
imported by hand. Lookups are flat dictionaries: an unknown kind or name raises ``KeyError`` with
the list of valid ones.

Specs. Wherever a name is accepted, a *spec* with literal keyword arguments is accepted too:
``"sgd(momentum=0.9, nesterov=True)"``. :func:`parse_spec` reads it with ``ast.literal_eval`` on
each value (never ``eval``), so a config field or a command-line flag can name an algorithm
together with its settings.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

KINDS: tuple[str, ...] = (
    "optimizer", "distributed", "layer", "solver", "peft", "merge", "advantage",
    "policy_loss", "preference_loss", "sampler", "reward", "aggregator", "participation",
    "balancer", "flow_loss", "continual", "experiment", "env",
)
"""The registry kinds: those of DESIGN.md, plus ``env`` for the catalog's bandit environment."""


@dataclass(frozen=True)
class Entry:
    """One registered algorithm."""

    kind: str
    name: str
    obj: Any
    paper: str
    arxiv: str | None
    summary: str | None
    module: str

    def __repr__(self) -> str:
        arxiv = f", arXiv {self.arxiv}" if self.arxiv else ""
        return f"<{self.kind}/{self.name}: {self.paper}{arxiv} ({self.module})>"


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_DISCOVERED = False            # discovery started (on some thread)
_DISCOVERY_DONE = False        # discovery finished: every module imported
_DISCOVERY_LOCK = threading.RLock()


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise KeyError(f"unknown registry kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def register(kind: str, name: str, *, paper: str, arxiv: str | None = None,
             summary: str | None = None, module: str | None = None) -> Callable[[Any], Any]:
    """Decorator registering a class or function under ``(kind, name)``.

    Args:
        kind: one of :data:`KINDS`.
        name: lower_snake_case name, unique within the kind.
        paper: title of the paper the algorithm comes from (required).
        arxiv: arXiv identifier such as ``"2302.06675"``, when the paper has one.
        summary: one line saying what the algorithm does; defaults to the first docstring line.
        module: the module to report; defaults to the module that calls ``register`` (so a
            wrapped ``torch.optim`` class reports the lab module that registered it).
    """
    _check_kind(kind)
    if not isinstance(name, str) or not name or name != name.lower() or " " in name:
        raise ValueError(f"name must be a non-empty lower_snake_case string, got {name!r}")
    if not isinstance(paper, str) or not paper.strip():
        raise ValueError(f"paper must be a non-empty title for {kind}/{name}, got {paper!r}")

    # The module that registers (for a wrapped torch class, the lab module, not torch's).
    caller = module or sys._getframe(1).f_globals.get("__name__", "?")

    def decorator(obj: Any) -> Any:
        module = caller
        existing = _REGISTRY[kind].get(name)
        if existing is not None and (existing.module, getattr(existing.obj, "__qualname__", None)) != (
            module, getattr(obj, "__qualname__", None)
        ):
            raise ValueError(f"{kind}/{name} is already registered by {existing.module}")
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        _REGISTRY[kind][name] = Entry(kind, name, obj, paper, arxiv,
                                      summary or (doc[0] if doc else None), module)
        return obj

    return decorator


def discover() -> None:
    """Import every module of the ``lab`` package once, so that all registrations have run.

    Modules whose name starts with an underscore (and ``lab.__main__``) are skipped. Optional
    dependencies (transformers, flwr) must be imported inside functions, never at module level.
    """
    global _DISCOVERED, _DISCOVERY_DONE
    if _DISCOVERY_DONE:
        return
    with _DISCOVERY_LOCK:            # another thread (a panel's run) may be discovering right now
        if _DISCOVERED:              # done, or re-entered by an import of this very discovery
            return
        _DISCOVERED = True
        import lab

        for mod in pkgutil.walk_packages(lab.__path__, prefix="lab."):
            leaf = mod.name.rsplit(".", 1)[-1]
            if leaf.startswith("_"):
                continue
            importlib.import_module(mod.name)
        try:
            import toy_envs  # noqa: F401  (registers gymnasium envs and toy generators)
        except ImportError:  # pragma: no cover - toy_envs ships with lab
            pass
        _DISCOVERY_DONE = True


def available(kind: str | None = None) -> list[str]:
    """Sorted names registered under ``kind``; with no kind, the list of kinds."""
    if kind is None:
        return list(KINDS)
    _check_kind(kind)
    discover()
    return sorted(_REGISTRY[kind])


def info(kind: str, name: str) -> Entry:
    """The :class:`Entry` of ``kind/name`` (object, paper, arXiv id, summary, module)."""
    _check_kind(kind)
    discover()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY[kind])) or "(none registered)"
        raise KeyError(f"unknown {kind} {name!r}; valid names: {valid}") from None


def get(kind: str, name: str) -> Any:
    """The registered class or function itself."""
    return info(kind, name).obj


def make(kind: str, spec: str, *args: Any, **kwargs: Any) -> Any:
    """Instantiate (or call) ``kind/name`` with ``args`` and ``kwargs``.

    ``spec`` may carry literal keyword arguments, ``"sgd(momentum=0.9)"``; explicit ``kwargs``
    win over those in the spec.
    """
    name, spec_kwargs = parse_spec(spec)
    return get(kind, name)(*args, **{**spec_kwargs, **kwargs})


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name(key=literal, ...)"`` into ``("name", {key: value})``.

    Values must be Python literals (numbers, strings, booleans, None, tuples, lists, dicts).

    >>> parse_spec("sgd(momentum=0.9, nesterov=True)")
    ('sgd', {'momentum': 0.9, 'nesterov': True})
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string such as 'adam' or 'sgd(momentum=0.9)', got {type(spec).__name__}")
    text = spec.strip()
    if "(" not in text:
        return text, {}
    try:
        call = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"cannot parse spec {spec!r}: {exc.msg}") from None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
        raise ValueError(f"spec must look like name(key=value, ...), got {spec!r}")
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ValueError(f"spec {spec!r}: **kwargs are not allowed")
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise ValueError(f"spec {spec!r}: value of {kw.arg!r} must be a literal") from None
    return call.func.id, kwargs


def entries(kind: str | None = None) -> list[Entry]:
    """All entries (of one kind, or of every kind), sorted by kind then name."""
    discover()
    kinds = [kind] if kind is not None else list(KINDS)
    for k in kinds:
        _check_kind(k)
    return [_REGISTRY[k][n] for k in kinds for n in sorted(_REGISTRY[k])]
