"""Panel latency, kernel side: every notebook panel's default run, timed.

    python benchmarks/panels.py                      # all notebooks; writes benchmarks/results/panels.md
    python benchmarks/panels.py --notebooks 00 06    # some notebooks (prints only)
    python benchmarks/panels.py --repeats 3

The list of panels comes from the notebooks themselves: each notebook's code cells run in this
process (as a kernel would run them) while :class:`lab.viz.panel.Panel` records every panel they
build, so the benchmark stays in sync with the lessons. Each panel then re-runs its opening
config ``repeats`` times, the panels interleaved round by round; the table gives medians of

- ``run``: the experiment, ``plot``: building the figures, ``draw``: updating the panel's
  FigureWidgets (diffing and applying the update; the kernel's message serialization is not
  included, ``payload`` gives the size of the figures' JSON as a proxy);
- ``first frame``: for a run that streams (its experiment hands its partial History to
  ``lab.progress.steps``), when its first frame was ready.

Target (issue 15): run + plot + draw <= 150 ms, else a streamed first frame within 300 ms. The
``cold`` column is the panel's first run in the process (imports, data loading, caches).
Absolute times depend on the machine's load; the header records it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
TARGET_S, FIRST_FRAME_TARGET_S = 0.150, 0.300


def _label(p, index: int) -> str:
    exp = p.experiment if isinstance(p.experiment, str) else getattr(p.experiment, "__name__", "callable")
    return f"{index}: {exp}" if exp != "<lambda>" else f"{index}: {type(p.defaults).__name__}"


@contextlib.contextmanager
def _recording(found: list):
    """Record every Panel built inside; panels run synchronously in this thread."""
    from lab.viz.panel import Panel

    original = Panel.__init__

    def init(self, *args, **kwargs):
        kwargs["background"] = False
        start = time.perf_counter()
        original(self, *args, **kwargs)
        found.append((self, time.perf_counter() - start))

    Panel.__init__ = init
    try:
        yield
    finally:
        Panel.__init__ = original


def collect(notebook: pathlib.Path) -> tuple[list, list[str]]:
    """Run a notebook's code cells here; returns its panels (with their cold time) and cell errors."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    found, errors = [], []
    namespace = {"__name__": "__main__"}
    cwd = os.getcwd()
    os.chdir(notebook.parent)
    try:
        with _recording(found):
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                source = "\n".join(line for line in cell.source.splitlines()
                                   if not line.lstrip().startswith(("%", "!")))
                try:
                    with contextlib.redirect_stdout(io.StringIO()):
                        exec(compile(source, f"{notebook.name}[{i}]", "exec"), namespace)
                except Exception as exc:  # a cell that needs a kernel or a panel result: reported
                    errors.append(f"cell {i}: {type(exc).__name__}: {exc}")
    finally:
        os.chdir(cwd)
    return found, errors


def _payload_kb(p) -> float:
    import plotly.io as pio

    return sum(len(pio.to_json(f.to_dict(), validate=False)) for f in p._figures) / 1024


def measure(notebooks: list[pathlib.Path], repeats: int) -> tuple[list[dict], list[str]]:
    import torch

    torch.set_num_threads(1)
    panels, problems = [], []
    for nb in notebooks:
        found, errors = collect(nb)
        problems += [f"{nb.stem}: {e}" for e in errors]
        for index, (p, cold) in enumerate(found):
            if p._last_error is not None:
                problems.append(f"{nb.stem} {_label(p, index)}: {type(p._last_error).__name__}: {p._last_error}")
            panels.append(dict(notebook=nb.stem, label=_label(p, index), panel=p, cold=cold, samples=[]))
    for _ in range(repeats):                                 # interleaved: one run of each panel per round
        for entry in panels:
            p = entry["panel"]
            if p.update():
                entry["samples"].append(dict(p.timings))
    rows = []
    for entry in panels:
        samples, p = entry["samples"], entry["panel"]
        if not samples:
            rows.append(dict(notebook=entry["notebook"], panel=entry["label"], error=str(p._last_error)))
            continue
        med = {k: statistics.median(s[k] for s in samples) for k in ("run", "plot", "draw")}
        frames = [s["first_frame"] for s in samples if s.get("first_frame") is not None]
        total = med["run"] + med["plot"] + med["draw"]
        first = statistics.median(frames) if frames else None
        ok = total <= TARGET_S or (first is not None and first <= FIRST_FRAME_TARGET_S)
        rows.append(dict(notebook=entry["notebook"], panel=entry["label"], cold=entry["cold"],
                         total=total, **med, first_frame=first, payload_kb=_payload_kb(p), ok=ok,
                         traces=sum(len(f.data) for f in p._figures)))
    return rows, problems


def table(rows: list[dict]) -> str:
    lines = ["| notebook | panel | run ms | plot ms | draw ms | total ms | first frame ms | cold ms | "
             "traces | payload KB | target |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['notebook']} | {r['panel']} | error: {r['error']} |" + " |" * 9)
            continue
        first = f"{1000 * r['first_frame']:.0f}" if r["first_frame"] is not None else "–"
        verdict = "ok" if r["total"] <= TARGET_S else ("streams" if r["ok"] else "**miss**")
        lines.append(f"| {r['notebook']} | {r['panel']} | {1000 * r['run']:.0f} | {1000 * r['plot']:.0f} | "
                     f"{1000 * r['draw']:.0f} | {1000 * r['total']:.0f} | {first} | {1000 * r['cold']:.0f} | "
                     f"{r['traces']} | {r['payload_kb']:.0f} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="*", help="notebook number prefixes, e.g. 00 06 (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.notebooks:
        paths = [p for p in paths if any(p.name.startswith(n) for n in args.notebooks)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()
    rows, problems = measure(paths, args.repeats)
    load = max(load, os.getloadavg()[0]) if hasattr(os, "getloadavg") else load
    import torch

    ok = sum(1 for r in rows if r.get("ok"))
    header = (f"# Panel latency, kernel side\n\nMeasured with `python benchmarks/panels.py` on {platform.machine()} "
              f"CPU ({os.cpu_count()} cores, load average up to {load:.1f} while measuring), torch "
              f"{torch.__version__}, one thread; medians of {args.repeats} interleaved runs per panel at its "
              f"opening config. {ok} of {len(rows)} panels meet the target (run + plot + draw <= 150 ms, "
              f"or a streamed first frame <= 300 ms). Took {time.perf_counter() - start:.0f} s.\n")
    text = header + "\n" + table(rows) + "\n"
    if problems:
        text += "\nCells that did not run here (outside a kernel):\n\n" + "\n".join(f"- {p}" for p in problems) + "\n"
    print(text)
    if not args.notebooks:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "panels.md").write_text(text)
        (RESULTS / "panels.json").write_text(json.dumps(
            [{k: v for k, v in r.items()} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
