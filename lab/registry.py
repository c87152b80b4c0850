"""The registry: every algorithm in the lab, found by ``(kind, name)``.

Each algorithm registers itself with the paper it comes from::

    @register("optimizer", "lion", paper="Symbolic Discovery of Optimization Algorithms",
              arxiv="2302.06675")
    class Lion(torch.optim.Optimizer): ...

    make("optimizer", "lion", model.parameters(), lr=1e-4)
    available("optimizer")          # ['adabelief', 'adam', ..., 'lion', ...]
    info("optimizer", "lion").paper

Registration happens when a module is imported. So that listing the catalog does not import every
algorithm (and torch), the package carries an index of what the decorators register,
``lab/_registry_index.py``: the kind, name, paper, arXiv id, summary and module of every entry, and
for experiments the rows ``python -m lab config`` prints. :func:`available`, :func:`entries` and
:func:`info` answer from the index together with whatever is registered already, importing nothing;
an :class:`Entry`'s ``obj``, :func:`get` and :func:`make` import the one module that registers the
name, on first use. Nothing has to be imported by hand.

The index is generated, never edited: :func:`lab.registry_index.build_index` imports every module
(:func:`discover`) and reads the registrations back; ``python -m lab index`` (``make
registry-index``) rewrites the file, and ``tests/test_registry_index.py`` fails when the file
differs from what the decorators register. A name the index lacks (a module added since the index was written) is still found:
:func:`get` and :func:`info` import every module before they give up. Lookups are flat
dictionaries: an unknown kind or name raises ``KeyError`` with the list of valid ones.

Specs. Wherever a name is accepted, a *spec* with literal keyword arguments is accepted too:
``"sgd(momentum=0.9, nesterov=True)"``. :func:`parse_spec` reads it with ``ast.literal_eval`` on
each value (never ``eval``), so a config field or a command-line flag can name an algorithm
together with its settings.
"""
from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import inspect
import pathlib
import pkgutil
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

KINDS: tuple[str, ...] = (
    "optimizer", "distributed", "layer", "solver", "peft", "merge", "advantage",
    "policy_loss", "preference_loss", "sampler", "reward", "aggregator", "participation",
    "balancer", "flow_loss", "continual", "experiment", "env",
)
"""The registry kinds: those of DESIGN.md, plus ``env`` for the catalog's bandit environment."""


_NOT_LOADED = object()          # Entry.loaded of an entry read from the index


@dataclass(frozen=True)
class Entry:
    """One registered algorithm.

    ``obj`` is the registered class or function. An entry read from the index holds no object
    yet: reading ``paper``, ``arxiv``, ``summary`` or ``module`` imports nothing, and ``obj``
    imports the module on first access (:func:`get`).
    """

    kind: str
    name: str
    loaded: Any = field(repr=False, compare=False)   # the object, or _NOT_LOADED for an index entry
    paper: str = ""
    arxiv: str | None = None
    summary: str | None = None
    module: str = ""

    @property
    def obj(self) -> Any:
        """The registered class or function; imports its module the first time."""
        return get(self.kind, self.name) if self.loaded is _NOT_LOADED else self.loaded

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


INDEX_PATH = pathlib.Path(__file__).with_name("_registry_index.py")
"""The generated index (see the module docstring)."""

_INDEX: dict[str, dict[str, dict[str, Any]]] | None = None


def _index() -> dict[str, dict[str, dict[str, Any]]]:
    """``{kind: {name: record}}`` from ``lab/_registry_index.py`` (empty when the file is absent)."""
    global _INDEX
    if _INDEX is None:
        try:
            from lab._registry_index import INDEX
        except ImportError:          # no index: every lookup falls back to discover()
            INDEX = {}
        _INDEX = INDEX
    return _INDEX


def index_record(kind: str, name: str) -> dict[str, Any] | None:
    """The index's record of ``kind/name`` (module, paper, arxiv, summary; ``config`` rows for an
    experiment), or None when the index does not hold it."""
    _check_kind(kind)
    return _index().get(kind, {}).get(name)


def _lookup(kind: str, name: str) -> Entry | None:
    """The registered entry, else the index's (not loaded), else None. Imports nothing."""
    entry = _REGISTRY[kind].get(name)
    if entry is not None:
        return entry
    rec = _index().get(kind, {}).get(name)
    if rec is None:
        return None
    return Entry(kind, name, _NOT_LOADED, rec["paper"], rec["arxiv"], rec["summary"], rec["module"])


def _unknown(kind: str, name: str) -> KeyError:
    valid = ", ".join(available(kind)) or "(none registered)"
    return KeyError(f"unknown {kind} {name!r}; valid names: {valid}")


def available(kind: str | None = None) -> list[str]:
    """Sorted names registered under ``kind`` (the index's and those registered at run time);
    with no kind, the list of kinds. Imports no algorithm module."""
    if kind is None:
        return list(KINDS)
    _check_kind(kind)
    return sorted(set(_REGISTRY[kind]) | set(_index().get(kind, {})))


def info(kind: str, name: str) -> Entry:
    """The :class:`Entry` of ``kind/name`` (paper, arXiv id, summary, module; ``obj`` on access).

    Imports nothing when the index holds the name; a name it lacks makes every module import once
    (:func:`discover`) before ``KeyError`` is raised.
    """
    _check_kind(kind)
    entry = _lookup(kind, name)
    if entry is None:
        discover()
        entry = _REGISTRY[kind].get(name)
    if entry is None:
        raise _unknown(kind, name)
    return entry


def get(kind: str, name: str) -> Any:
    """The registered class or function itself: imports the module that registers it, on first use
    (every module, :func:`discover`, when the index does not name one or the one it names does
    not register ``name``)."""
    _check_kind(kind)
    entry = _REGISTRY[kind].get(name)
    if entry is None:
        rec = _index().get(kind, {}).get(name)
        if rec is not None:
            importlib.import_module(rec["module"])
            entry = _REGISTRY[kind].get(name)
    if entry is None:                # not in the index, or the index is stale: import everything
        discover()
        entry = _REGISTRY[kind].get(name)
    if entry is None:
        raise _unknown(kind, name)
    return entry.loaded


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
    """All entries (of one kind, or of every kind), sorted by kind then name. Imports no algorithm
    module: entries the index holds and no import has registered yet load ``obj`` on access."""
    kinds = [kind] if kind is not None else list(KINDS)
    for k in kinds:
        _check_kind(k)
    return [_lookup(k, n) for k in kinds for n in available(k)]


def module_docstring(module: str) -> str:
    """The cleaned docstring of ``module`` (``inspect.getdoc``), read from its source without
    importing it when it is not imported yet; ``""`` when there is none or no source is found."""
    if module in sys.modules:
        return inspect.getdoc(sys.modules[module]) or ""
    return _docstring_from_source(module)


def _docstring_from_source(module: str) -> str:
    """``module``'s cleaned docstring parsed from its source file, without importing it (nor its
    parent packages)."""
    parts = module.split(".")
    spec = importlib.util.find_spec(parts[0])    # a top-level name: found without importing it
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return ""
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]),
                                                        list(spec.submodule_search_locations))
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    try:
        tree = ast.parse(pathlib.Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""
    return ast.get_docstring(tree, clean=True) or ""
