"""The experiment contract: a frozen dataclass config in, a :class:`~lab.history.History` out.

    @experiment("optimizer_on_surface", SurfaceConfig, paper="...", plot=trajectory_plot)
    def optimizer_on_surface(cfg: SurfaceConfig) -> History: ...

    run("optimizer_on_surface", lr=0.01)                      # default config with one change
    run("optimizer_on_surface", SurfaceConfig(surface="beale"))
    sweep("optimizer_on_surface", "optimizer", ["sgd", "adam"])   # -> Runs, one per value

The decorator registers the function under kind ``experiment`` and attaches ``.config`` (the
dataclass) and ``.plot`` (a ``History -> go.Figure`` builder used by the CLI's ``--html``).
"""
from __future__ import annotations

import dataclasses
import time
import types
import typing
from typing import Any, Callable, Iterable

from lab.history import History, Runs
from lab.registry import get, register


def experiment(name: str, config: type, *, paper: str, arxiv: str | None = None,
               summary: str | None = None, plot: Callable[..., Any] | None = None,
               smoke: dict[str, Any] | None = None):
    """Register ``fn(cfg) -> History`` as experiment ``name`` with config dataclass ``config``.

    ``smoke`` is the experiment's smallest meaningful config, as overrides of the default (a few
    steps, a tiny model): the device tests and quick checks run it.
    """
    if not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
        raise TypeError(f"config of experiment {name!r} must be a frozen dataclass")

    def decorator(fn: Callable[[Any], History]) -> Callable[[Any], History]:
        fn.config = config
        fn.plot = plot
        fn.smoke = dict(smoke or {})
        return register("experiment", name, paper=paper, arxiv=arxiv, summary=summary,
                        module=fn.__module__)(fn)

    return decorator


def resolve_device(device: Any) -> "torch.device":
    """The ``torch.device`` of a config's ``device`` field: ``"auto"`` is CUDA when available,
    else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"meta"`` ... are taken as they are.

    Raises ``ValueError`` naming ``device`` for an unknown name or a CUDA device that is absent.
    """
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return dev


def on_cpu(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the CPU as the default device: a data generator or model
    constructor that creates tensors without naming a device builds them on the CPU (the same data
    and init on every device; the experiment then moves them to ``cfg.device`` explicitly)."""
    import torch

    with torch.device("cpu"):
        return fn(*args, **kwargs)


def drawn_on_cpu(fn: Callable[..., Any], *args: Any, device: Any, **kwargs: Any) -> Any:
    """``fn(*args, device="cpu", **kwargs).to(device)``: a random draw (``torch.randint``,
    ``torch.randperm``, ``torch.randn`` ...) from a CPU generator, moved to ``device``, so that a
    seed gives the same batches on every device."""
    return fn(*args, device="cpu", **kwargs).to(device)


def config_of(name: str) -> type:
    """The config dataclass of experiment ``name``."""
    return get("experiment", name).config


def field_types(config: type) -> dict[str, Any]:
    """``{field: resolved type}`` of a config dataclass."""
    hints = typing.get_type_hints(config)
    return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def field_docs(config: type) -> dict[str, str]:
    """``{field: comment}`` from the trailing ``# comment`` of each field line in the dataclass source.

    The lab's configs document every field that way (``lr: float = 0.1  # learning rate``); a field
    without a comment, or a class whose source is unavailable, maps to ``""``.
    """
    import inspect
    import io
    import textwrap
    import tokenize

    docs = {f.name: "" for f in dataclasses.fields(config)}
    try:
        source = textwrap.dedent(inspect.getsource(config))
    except (OSError, TypeError):
        return docs
    pending = None                                     # the field whose line is being read
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in docs and pending is None:
            pending = tok.string
        elif tok.type == tokenize.COMMENT and pending is not None and not docs[pending]:
            docs[pending] = tok.string.lstrip("#").strip()        # first comment of the field's lines
        if tok.type == tokenize.NEWLINE:                          # end of the logical line
            pending = None
    return docs


def config_rows(config: type) -> list[tuple[str, str, str, str]]:
    """``(field, type, default, comment)`` of each field of a config dataclass, as strings: the
    rows ``python -m lab config`` prints (the registry index stores them, so that the command
    imports no experiment)."""
    types_ = field_types(config)
    docs = field_docs(config)
    default = config()
    rows = []
    for f in dataclasses.fields(config):
        t = types_[f.name]
        tname = getattr(t, "__name__", None) or str(t).replace("typing.", "")
        rows.append((f.name, tname, repr(getattr(default, f.name)), docs[f.name]))
    return rows


def experiment_config_rows(name: str) -> list[tuple[str, str, str, str]]:
    """:func:`config_rows` of experiment ``name``: from the registry index when the experiment is
    not imported yet (no import), else from its config class."""
    from lab import registry

    record = registry.index_record("experiment", name)
    if record is not None and name not in registry._REGISTRY["experiment"]:
        return [tuple(row) for row in record["config"]]
    return config_rows(config_of(name))


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` with an error listing the valid fields for an unknown key."""
    names = [f.name for f in dataclasses.fields(cfg)]
    unknown = [k for k in changes if k not in names]
    if unknown:
        raise KeyError(f"unknown config field(s) {', '.join(unknown)} for "
                       f"{type(cfg).__name__}; valid fields: {', '.join(names)}")
    return dataclasses.replace(cfg, **changes)


def check_config(cfg: Any) -> Any:
    """Checks every experiment's config gets before it runs, whatever the experiment checks itself.

    - A field declared ``float`` (also ``float | None`` and tuples of floats) must hold finite real
      numbers: NaN or ±inf raises ``ValueError`` naming the field.
    - A field named ``seed`` (or ending in ``_seed``) must be a non-negative int: ``ValueError``
      (negative) or ``TypeError`` (not an int) naming the field.

    Returns ``cfg``.
    """
    import math

    declared = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "seed" or f.name.endswith("_seed"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{f.name} must be a non-negative int, got {value!r}")
            if value < 0:
                raise ValueError(f"{f.name} must be a non-negative int, got {value}")
        if not _declares_float(declared[f.name]):
            continue
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
    return cfg


def _declares_float(annotation: Any) -> bool:
    """True for ``float``, ``float | None``, ``tuple[float, ...]`` and unions holding one of them."""
    if annotation is float:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple):
        return any(_declares_float(a) for a in typing.get_args(annotation) if a is not Ellipsis)
    return False


def run(name: str, cfg: Any = None, **changes: Any) -> History:
    """Run experiment ``name`` on ``cfg`` (default config if None) with ``changes`` applied.

    The config is checked first (:func:`check_config`: finite floats, a non-negative seed). The
    returned History has ``meta['config']``, ``meta['experiment']`` and ``meta['wall_time']``
    filled in.
    """
    fn = get("experiment", name)
    cfg = fn.config() if cfg is None else cfg
    if not isinstance(cfg, fn.config):
        raise TypeError(f"cfg must be a {fn.config.__name__}, got {type(cfg).__name__}")
    cfg = replace(cfg, **changes) if changes else cfg
    check_config(cfg)
    start = time.perf_counter()
    history = fn(cfg)
    if not isinstance(history, History):
        raise TypeError(f"experiment {name!r} returned {type(history).__name__}, not a History")
    history.meta.setdefault("experiment", name)
    history.meta.setdefault("config", dataclasses.asdict(cfg))
    history.meta["wall_time"] = time.perf_counter() - start
    return history


def sweep(name: str, field: str, values: Iterable[Any], cfg: Any = None,
          labels: Iterable[str] | None = None, **changes: Any) -> Runs:
    """Run experiment ``name`` once per value of config ``field``; returns labelled Runs."""
    values = list(values)
    labels = [str(v) for v in values] if labels is None else list(labels)
    return Runs({label: run(name, cfg, **{**changes, field: value})
                 for label, value in zip(labels, values)})


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: ``"a(x=1, y=2), b"`` -> two parts."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_value(text: str, annotation: Any) -> Any:
    """Parse a command-line string into a value of a dataclass field type (never ``eval``).

    Supports bool, int, float, str, ``X | None`` / Optional, ``Literal[...]`` and
    ``tuple[X, ...]`` / ``tuple[X, Y]`` (comma-separated; commas inside brackets, as in
    ``"arithmetic(max_operand=9, partial_credit=False), strings"``, do not split).
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() == "none" and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, arg)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == text:
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, args))}, got {text!r}")
    if origin is tuple:
        parts = [p.strip() for p in _split_top_level(text) if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {text!r}")
        return tuple(parse_value(p, a) for p, a in zip(parts, args))
    if annotation is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if annotation is int:
        return int(text)
    if annotation is float:
        return float(text)
    if annotation is str:
        return text
    raise TypeError(f"cannot parse a value of type {annotation!r} from the command line")
