"""EGGROLL against full-rank ES: cost of one population forward (and one full step) at population 64.

Model: an MLP 1024 -> 1024 -> 1024 (two 1024 x 1024 weight matrices, tanh), each of the 64
members evaluating its own 8 input rows. Both methods use ``lab.optim.es.population_call``:

- full-rank ES: every member carries its own (1024, 1024) weights, so the forward is a batched
  matmul over 64 distinct matrices (and the population's weights must exist in memory);
- EGGROLL: one shared matmul ``x W^T`` for all members plus the factored term ``(x B_i) A_i^T``.

Measured, as medians over interleaved repeats in one process: the forward alone (the population's
parameters built beforehand) and one whole ``step`` (noise, forward, update). Reported as ratios
EGGROLL / ES, with the perturbation memory per matrix (bytes of the population's perturbed
weights: N*m*n for ES, N*r*(m+n) for EGGROLL's factors).

Reading the numbers: both forwards do the same multiply-adds (N * rows * m * n per matrix); ES
must also stream N distinct weight matrices from memory, EGGROLL one. On a CPU with few rows per
member the forward gain is therefore modest; the large gain is in the step, where ES draws and
adds N/2 full noise matrices and builds N perturbed copies, EGGROLL N/2 thin factor pairs.

Run: ``python benchmarks/es_cost.py`` (writes ``benchmarks/results/es_cost.md``).
"""
from __future__ import annotations

import pathlib
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lab.optim.eggroll import EGGROLL  # noqa: E402
from lab.optim.es import ES, LowRankBatch, population_call  # noqa: E402

POPULATION = 64
WIDTH = 1024
ROWS = 8  # input rows per member
RANKS = (1, 4, 16, 64)
REPEATS = 7


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH))


def _captured_batch(opt):
    """The params_batch the optimizer builds for one step (captured, not evaluated)."""
    holder = {}

    def capture(batch):
        holder["batch"] = batch
        return torch.zeros(POPULATION)

    opt.estimate(capture)
    return holder["batch"]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _perturbation_bytes(batch) -> int:
    """Bytes of the population's perturbed weight matrices (2-D entries only)."""
    total = 0
    for entry in batch:
        if isinstance(entry, LowRankBatch):
            total += entry.A.numel() * entry.A.element_size() + entry.B.numel() * entry.B.element_size()
        elif entry.dim() == 3:
            total += entry.numel() * entry.element_size()
    return total


def main() -> str:
    model = _model()
    x = torch.randn(POPULATION, ROWS, WIDTH, generator=torch.Generator().manual_seed(1))

    def fitness_for(opt):
        return lambda batch: population_call(model, opt.params, batch, x, batched_inputs=True).mean(dim=(1, 2))

    opts = {"es": ES(model.parameters(), sigma=0.01, population=POPULATION)}
    for r in RANKS:
        opts[f"eggroll r={r}"] = EGGROLL(model.parameters(), sigma=0.01, rank=r, population=POPULATION)
    batches = {name: _captured_batch(opt) for name, opt in opts.items()}
    forward = {name: [] for name in opts}
    step = {name: [] for name in opts}
    with torch.no_grad():
        for name, opt in opts.items():  # warm-up
            population_call(model, opt.params, batches[name], x, batched_inputs=True)
        for _ in range(REPEATS):  # interleaved repeats
            for name, opt in opts.items():
                forward[name].append(_timed(lambda: population_call(model, opt.params, batches[name], x,
                                                                    batched_inputs=True)))
                step[name].append(_timed(lambda: opt.estimate(fitness_for(opt))))
    es_fwd, es_step = statistics.median(forward["es"]), statistics.median(step["es"])
    es_bytes = _perturbation_bytes(batches["es"])
    lines = [
        f"EGGROLL vs full-rank ES, population {POPULATION}, MLP {WIDTH}-{WIDTH}-{WIDTH} "
        f"(two {WIDTH}x{WIDTH} matrices), {ROWS} input rows per member, float32, "
        f"CPU ({torch.get_num_threads()} threads), medians of {REPEATS} interleaved repeats.",
        "",
        "| method | forward (ms) | forward / ES | step (ms) | step / ES | perturbation bytes / ES |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in opts:
        fwd, stp = statistics.median(forward[name]), statistics.median(step[name])
        lines.append(f"| {name} | {1e3 * fwd:.1f} | {fwd / es_fwd:.3f} | {1e3 * stp:.1f} | {stp / es_step:.3f} "
                     f"| {_perturbation_bytes(batches[name]) / es_bytes:.4f} |")
    lines += ["", "step = noise draw + population forward + update estimate (`ES.estimate`)."]
    table = "\n".join(lines) + "\n"
    out = pathlib.Path(__file__).resolve().parent / "results" / "es_cost.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# es_cost\n\n" + table)
    return table


if __name__ == "__main__":
    print(main())
