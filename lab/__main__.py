"""The command line.

    python -m lab list [KIND]                      table of registered algorithms and their papers
    python -m lab info KIND NAME                   one entry: paper, arXiv id, module, docstring
    python -m lab run EXPERIMENT --set key=value ... [--json out.json] [--html out.html]
    python -m lab config EXPERIMENT                the config fields, their types and defaults
    python -m lab index [--check]                  regenerate lab/_registry_index.py (or check it)

``list``, ``info`` and ``config`` read the registry index (:mod:`lab.registry`) and import no
algorithm module, nor torch. Values given with ``--set`` are parsed from the config dataclass's field types (never ``eval``);
an unknown key is an error that lists the valid ones. Runs longer than a second show a progress bar.
"""
from __future__ import annotations

import argparse
import sys
import textwrap

from lab import progress, registry
from lab.experiments import config_of, experiment_config_rows, field_types, parse_value, run


def _cmd_list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else registry.available()
    rows = [(e.kind, e.name, e.paper, e.arxiv or "") for k in kinds for e in registry.entries(k)]
    if not rows:
        print(f"nothing registered under {args.kind!r}")
        return 0
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    for kind, name, paper, arxiv in rows:
        paper = paper if len(paper) <= 90 else paper[:87] + "..."
        print(f"{kind:<{width[0]}}  {name:<{width[1]}}  {paper}" + (f"  [arXiv {arxiv}]" if arxiv else ""))
    print(f"\n{len(rows)} registered")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    entry = registry.info(args.kind, args.name)
    print(f"{entry.kind}/{entry.name}")
    print(f"  paper:   {entry.paper}")
    if entry.arxiv:
        print(f"  arXiv:   {entry.arxiv}")
    print(f"  module:  {entry.module}")
    if entry.summary:
        print(f"  summary: {entry.summary}")
    doc = registry.module_docstring(entry.module)
    if doc:
        print("\n" + textwrap.indent(doc, "  "))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    for name, tname, default, doc in experiment_config_rows(args.experiment):
        value = f"= {default}"
        print(f"{name:<24} {tname:<22} {value:<24} {doc}".rstrip())
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from lab.registry_index import build_index, render_index, write_index

    if args.check:
        text = render_index(build_index())
        current = registry.INDEX_PATH.read_text(encoding="utf-8") if registry.INDEX_PATH.exists() else ""
        if text != current:
            print(f"{registry.INDEX_PATH} is stale: run `python -m lab index`", file=sys.stderr)
            return 1
        print(f"{registry.INDEX_PATH} is current")
        return 0
    path = write_index()
    print(f"wrote {path}")
    return 0


def _parse_sets(experiment: str, pairs: list[str]) -> dict:
    config = config_of(experiment)
    types = field_types(config)
    changes = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: --set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        key = key.strip()
        if key not in types:
            raise SystemExit(f"error: unknown config key {key!r} for {experiment}; "
                             f"valid keys: {', '.join(types)}")
        try:
            changes[key] = parse_value(text, types[key])
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"error: bad value for {key}: {exc}") from None
    return changes


def _cmd_run(args: argparse.Namespace) -> int:
    changes = _parse_sets(args.experiment, args.set or [])
    with progress.enabled(delay=args.progress_delay):
        history = run(args.experiment, **changes)
    print(f"{args.experiment}: {len(history)} rows in {history.meta['wall_time']:.2f} s")
    for key in history.keys:
        values = history[key]
        if values.ndim == 1 and len(values):
            print(f"  {key:<20} first {values[0]:.6g}   last {values[-1]:.6g}")
    if args.json:
        history.to_json(args.json)
        print(f"wrote {args.json}")
    if args.html:
        from lab.registry import get
        from lab.viz import history_figure

        plot = get("experiment", args.experiment).plot or history_figure
        figs = plot(history)
        figs = figs if isinstance(figs, (list, tuple)) else [figs]
        with open(args.html, "w") as fh:
            for i, fig in enumerate(figs):
                fh.write(fig.to_html(full_html=False, include_plotlyjs="cdn" if i == 0 else False))
        print(f"wrote {args.html}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description="trainlab command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list registered algorithms")
    p.add_argument("kind", nargs="?", help=f"one of: {', '.join(registry.KINDS)}")
    p.set_defaults(fn=_cmd_list)
    p = sub.add_parser("info", help="show one registered algorithm")
    p.add_argument("kind")
    p.add_argument("name")
    p.set_defaults(fn=_cmd_info)
    p = sub.add_parser("config", help="show an experiment's config fields")
    p.add_argument("experiment")
    p.set_defaults(fn=_cmd_config)
    p = sub.add_parser("index", help="regenerate the registry index from the decorators")
    p.add_argument("--check", action="store_true", help="only check that the index is current")
    p.set_defaults(fn=_cmd_index)
    p = sub.add_parser("run", help="run an experiment")
    p.add_argument("experiment")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a config field")
    p.add_argument("--json", metavar="PATH", help="write the History as JSON")
    p.add_argument("--html", metavar="PATH", help="write the experiment's plot as HTML")
    p.add_argument("--progress-delay", type=float, default=1.0, metavar="SECONDS",
                   help="show a progress bar once a run takes longer than this (default 1)")
    p.set_defaults(fn=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (KeyError, ValueError) as exc:      # bad names and bad values: one line, no traceback
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
