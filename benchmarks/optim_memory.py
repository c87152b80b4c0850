"""Optimizer-state memory and step time of the memory-efficient optimizers, against AdamW.

    python benchmarks/optim_memory.py            # prints a markdown table, writes benchmarks/results/optim_memory.md

Setup: four 1024 x 1024 float32 weights (4.2 M parameters) with fixed random gradients. For each
rank r in (8, 32, 128): GaLore, Fira and GradNormLoRP with ``rank=r``, FRUGAL (SVD) with
``density=r/1024`` (the same subspace size); BAdam (one block per weight) and AdamW once.

- state: bytes in ``optimizer.state`` after one step (:func:`lab.optim.memory.state_bytes`), and the
  ratio to AdamW's.
- step: median wall time of a step without a projector refresh (``update_proj_gap`` larger than the
  run), ratio to AdamW's median; the methods' steps are interleaved, repeat after repeat, so that
  machine load hits all alike.
- refresh: median time of a step that recomputes every projector (an SVD per weight), paid once per
  ``update_proj_gap`` steps (200 by default, so ~1/200 of it per step on average), with the exact
  SVD (``torch.linalg.svd``) and with ``svd="lowrank"`` (randomized, ``randomized_svd``).
- energy: the fraction of a gradient's energy ||P(G)||^2 / ||G||^2 that the rank-r subspace of the
  randomized SVD captures, against the exact top-r subspace (the best possible, Eckart-Young), for
  a 1024 x 1024 gradient with singular values k^-1 (the fast decay of real weight gradients), k^-1/2
  and a Gaussian matrix (no low-rank structure: the hardest case).

Single-threaded CPU (``torch.set_num_threads(1)``), float32. The machine's load average is printed
with the table (timings on a shared machine are noisy; the ratios are what to read).
"""
from __future__ import annotations

import functools
import os
import pathlib
import platform
import statistics
import time
from typing import Callable

import torch

from lab.optim.badam import BAdam
from lab.optim.fira import Fira
from lab.optim.frugal import FRUGAL
from lab.optim.galore import GaLore
from lab.optim.gradnorm_lorp import GradNormLoRP
from lab.optim.memory import state_bytes
from lab.optim.projection import compute, energy

SIZE, LAYERS, RANKS, REPEATS = 1024, 4, (8, 32, 128), 7
NO_REFRESH = 10 ** 9

Factory = Callable[[list[torch.Tensor], int, int], torch.optim.Optimizer]
LOW_RANK: dict[str, Factory] = {  # (params, rank, update_proj_gap) -> optimizer
    "galore": lambda ps, r, gap: GaLore(ps, rank=r, update_proj_gap=gap),
    "fira": lambda ps, r, gap: Fira(ps, rank=r, update_proj_gap=gap),
    "frugal (svd)": lambda ps, r, gap: FRUGAL(ps, density=r / SIZE, update_proj_gap=gap),
    "gradnorm_lorp": lambda ps, r, gap: GradNormLoRP(ps, rank=r, update_proj_gap=gap),
    "galore (svd=lowrank)": lambda ps, r, gap: GaLore(ps, rank=r, update_proj_gap=gap, svd="lowrank"),
}


def _weights(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(SIZE, SIZE, generator=g) / SIZE ** 0.5) for _ in range(LAYERS)]
    for p in params:
        p.grad = torch.randn(SIZE, SIZE, generator=g)
    return params


def _build(factory: Factory, rank: int, gap: int) -> torch.optim.Optimizer:
    return factory(_weights(), rank, gap)


def _timed_step(opt: torch.optim.Optimizer) -> float:
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start


def measure() -> list[dict]:
    """One row per (method, rank): state bytes and median step / refresh times."""
    makers: dict[tuple[str, int | None], Callable[[int], torch.optim.Optimizer]] = {
        ("adamw", None): lambda gap: torch.optim.AdamW(_weights()),
        ("badam", None): lambda gap: BAdam([{"params": [p]} for p in _weights()], switch_block_every=NO_REFRESH),
    }
    for rank in RANKS:
        for name, factory in LOW_RANK.items():
            makers[(name, rank)] = functools.partial(_build, factory, rank)
    rows = []
    opts = {key: make(NO_REFRESH) for key, make in makers.items()}
    for opt in opts.values():
        opt.step()  # creates the state (and the projectors)
    times: dict = {key: [] for key in opts}
    for _ in range(REPEATS):  # interleaved repeats
        for key, opt in opts.items():
            times[key].append(_timed_step(opt))
    refresh: dict = {}
    for key, make in makers.items():
        if key[1] is None:
            continue
        opt = make(1)  # a refresh on every step
        refresh[key] = statistics.median(_timed_step(opt) for _ in range(3))
    for key, opt in opts.items():
        rows.append({"method": key[0], "rank": key[1], "state_bytes": state_bytes(opt),
                     "step_s": statistics.median(times[key]), "refresh_s": refresh.get(key)})
    return rows


def spectra(size: int = SIZE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gradients with a known spectrum: s_k = k^-1, k^-1/2, and a Gaussian matrix."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(size, size, generator=g))
    v, _ = torch.linalg.qr(torch.randn(size, size, generator=g))
    k = torch.arange(1, size + 1, dtype=torch.float32)
    return {"s_k = 1/k": u @ torch.diag(1 / k) @ v.T, "s_k = k^-1/2": u @ torch.diag(k ** -0.5) @ v.T,
            "gaussian": torch.randn(size, size, generator=g)}


def energy_rows() -> list[dict]:
    """Captured energy of the randomized vs the exact rank-r subspace, and the SVD times."""
    rows = []
    for name, grad in spectra().items():
        total = float(grad.pow(2).sum())
        for rank in RANKS:
            start = time.perf_counter()
            exact = energy(grad, compute(grad, rank)) / total
            t_exact = time.perf_counter() - start
            start = time.perf_counter()
            approx = energy(grad, compute(grad, rank, svd="lowrank", generator=torch.Generator().manual_seed(1)))
            t_approx = time.perf_counter() - start
            rows.append({"spectrum": name, "rank": rank, "exact": exact, "lowrank": approx / total,
                         "t_exact": t_exact, "t_lowrank": t_approx})
    return rows


def energy_table(rows: list[dict]) -> str:
    lines = ["| gradient spectrum | rank r | energy, exact SVD | energy, randomized | randomized / exact "
             "| SVD time exact / randomized (ms) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['spectrum']} | {r['rank']} | {r['exact']:.4f} | {r['lowrank']:.4f} | "
                     f"{r['lowrank'] / r['exact']:.4f} | {1e3 * r['t_exact']:.0f} / {1e3 * r['t_lowrank']:.0f} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    ref = next(r for r in rows if r["method"] == "adamw")
    lines = ["| method | rank r | state (MiB) | state / AdamW | step (ms) | step / AdamW | refresh step (ms) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        refresh = f"{1e3 * r['refresh_s']:.0f}" if r["refresh_s"] is not None else "-"
        lines.append(f"| {r['method']} | {r['rank'] if r['rank'] is not None else '-'} | "
                     f"{r['state_bytes'] / 2 ** 20:.2f} | {r['state_bytes'] / ref['state_bytes']:.3f} | "
                     f"{1e3 * r['step_s']:.1f} | {r['step_s'] / ref['step_s']:.2f} | {refresh} |")
    return "\n".join(lines)


def main() -> str:
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = measure()
    energies = energy_rows()
    load_after = os.getloadavg()
    header = (f"# Optimizer-state memory and step time vs AdamW\n\n"
              f"{LAYERS} weights of {SIZE}x{SIZE} float32 ({LAYERS * SIZE * SIZE / 1e6:.1f} M parameters), "
              f"1 CPU thread ({platform.processor() or platform.machine()}, torch {torch.__version__}); "
              f"medians of {REPEATS} interleaved repeats. FRUGAL uses density r/{SIZE}; BAdam holds one "
              f"block (one weight) of state. 'refresh step' = a step that recomputes every projector "
              f"(SVD), paid once per update_proj_gap steps. Load average (1 min) "
              f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores.\n\n")
    text = (header + table(rows) + "\n\n## Randomized SVD refresh: captured gradient energy\n\n"
            "Fraction of ||G||^2 in the rank-r subspace, exact top-r SVD vs the randomized SVD "
            "(`svd=\"lowrank\"`: 8 extra columns, 2 power iterations), one 1024 x 1024 float32 gradient.\n\n"
            + energy_table(energies) + "\n")
    print(text)
    out = pathlib.Path(__file__).resolve().parent / "results" / "optim_memory.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


if __name__ == "__main__":
    main()
