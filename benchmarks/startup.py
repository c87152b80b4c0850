"""How long the command line takes to answer, as a ratio to ``python -c "import torch"``.

    python benchmarks/startup.py [--repeats N]   # prints markdown, writes benchmarks/results/startup.md

``python -m lab list``, ``info KIND NAME`` and ``config EXPERIMENT`` read the registry index
(``lab/_registry_index.py``) and import no algorithm module (nor torch); before the index they
imported every module of the package, torch and plotly included. Each command is a fresh
subprocess; the commands are run interleaved (one round = every command once, in a rotating
order), and each ratio is the median over rounds of (command time / ``import torch`` time in the
same round), so that a change in the machine's load between rounds cancels. Target (issue 19):
every ratio ≤ 1.3. ``--full-discovery`` adds ``python -c "from lab import registry;
registry.discover()"`` — what listing cost before the index — for scale.

Absolute times depend on the machine's load (reported, as ``os.getloadavg()`` before and after);
the ratios less so. The interpreter's own start (``python -c pass``) is reported too.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "startup.md"

BASELINE = ("import torch", [sys.executable, "-c", "import torch"])
COMMANDS = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("python -m lab list", [sys.executable, "-m", "lab", "list"]),
    ("python -m lab info optimizer lion", [sys.executable, "-m", "lab", "info", "optimizer", "lion"]),
    ("python -m lab config moe_transformer", [sys.executable, "-m", "lab", "config", "moe_transformer"]),
]
DISCOVERY = ("import every module (registry.discover)",
             [sys.executable, "-c", "from lab import registry; registry.discover()"])
MEANING = {
    "python -c pass": "the interpreter's own start, the floor under every command",
    "python -m lab list": "the whole catalog table (every entry) from the index",
    "python -m lab info optimizer lion": "one entry, with its module docstring parsed from source",
    "python -m lab config moe_transformer": "one experiment's config rows from the index",
    "import every module (registry.discover)": "what every listing cost before the index",
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(repeats: int, full_discovery: bool) -> tuple[dict[str, list[float]], list[float]]:
    """Per command, the per-round ratios to ``import torch``; and the ``import torch`` times."""
    env = _env()
    commands = [BASELINE, *COMMANDS] + ([DISCOVERY] if full_discovery else [])
    for _, argv in commands:                 # warm the file cache and .pyc files once
        _time(argv, env)
    ratios: dict[str, list[float]] = {label: [] for label, _ in commands[1:]}
    baseline: list[float] = []
    for r in range(repeats):
        order = commands[r % len(commands):] + commands[:r % len(commands)]   # rotate the order
        times = {label: _time(argv, env) for label, argv in order}
        baseline.append(times[BASELINE[0]])
        for label in ratios:
            ratios[label].append(times[label] / times[BASELINE[0]])
    return ratios, baseline


def report(ratios: dict[str, list[float]], baseline: list[float], load: tuple, repeats: int) -> str:
    import torch

    torch_ms = 1000 * statistics.median(baseline)
    lines = [
        "# Command-line startup against `import torch`",
        "",
        f"Measured with `python benchmarks/startup.py --repeats {repeats}` on {platform.machine()} "
        f"CPU ({os.cpu_count()} cores shared with about 6 other users; load average "
        f"{load[0]:.1f} before and {load[1]:.1f} after measuring), Python {platform.python_version()}, "
        f"torch {torch.__version__}. Each command is a fresh subprocess; the commands run "
        "interleaved, and each ratio is the median over rounds of (command time / `import torch` "
        "time in the same round). Target: ≤ 1.3.",
        "",
        f"`python -c \"import torch\"`: median {torch_ms:.0f} ms over {repeats} rounds (under that load).",
        "",
        "| command | time / `import torch` (median) | min–max over rounds | what it measures |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, values in ratios.items():
        lines.append(f"| `{label}` | {statistics.median(values):.2f} | "
                     f"{min(values):.2f}–{max(values):.2f} | {MEANING[label]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--full-discovery", action="store_true",
                        help="also time importing every module (the cost before the index)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    ratios, baseline = measure(args.repeats, args.full_discovery)
    after = os.getloadavg()[0]
    text = report(ratios, baseline, (before, after), args.repeats)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
