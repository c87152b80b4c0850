"""Throughput of the federated simulator, and its wall time against a Flower-style run of the same FedAvg.

    python benchmarks/federated.py            # writes benchmarks/results/federated.md
    python benchmarks/federated.py --quick    # smaller sizes, fewer repeats (a smoke run)

1. Throughput: ``lab.federated.simulate`` on least squares (d = 10, 20 examples per client,
   full participation, K = 5 full-batch local steps, FedAvg) for 1000 clients x 100 rounds
   (target: a few seconds on 2 cores), reported as client-rounds per second.
2. Against Flower. Flower's simulation engine (``flwr.simulation``) needs Ray, which is not
   installed here (``flwr.simulation.RAY_IMPORT_ERROR`` is set), so the comparison runs Flower's
   own server loop in-process (``lab.federated.flower.run_flower``: ``flwr.server.Server`` with
   Flower's ``FedAvg`` strategy; each client a ``NumPyClient`` from
   ``lab.federated.flower.make_client`` behind an in-process ``ClientProxy``, fitted in Flower's
   thread pool, results as ``FitRes`` with serialized ``Parameters``). Same problem, same FedAvg,
   same local steps; the final models agree (checked). This leaves out the Ray engine's process
   and transport overhead, so the real simulation would be slower still. Also timed: aggregation alone (``FedAvg.aggregate`` on a dict of updates vs
   Flower's ``aggregate_fit`` on ``FitRes`` objects) for 1000 clients.

Timings are medians of interleaved repeats in one process; the machine is shared, so only the
ratios are meaningful.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import time

import numpy as np
import torch

from lab.federated import Bernoulli, simulate
from lab.federated.fedavg import FedAvg
from toy_envs.federated import least_squares

RESULT = pathlib.Path(__file__).resolve().parent / "results" / "federated.md"


def run_lab(problem, rounds: int, steps: int, lr: float) -> np.ndarray:
    full = torch.ones(problem.num_clients, dtype=torch.float64)
    h = simulate(problem, FedAvg(), Bernoulli(full), rounds, steps, lr, 0, record_clients=False,
                 eval_every=rounds)
    return np.array(h.artifacts["x_final"])


def run_flower(problem, rounds: int, steps: int, lr: float) -> np.ndarray:
    """The same FedAvg run through Flower's own server loop with Flower's own FedAvg strategy."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg as FlowerFedAvg

    from lab.federated.flower import make_client, run_flower as flower_loop

    alg = FedAvg().setup(problem.num_clients, problem.dim, problem)  # the clients' local SGD
    clients = [make_client(alg, problem, i, local_steps=steps, lr=lr) for i in range(problem.num_clients)]
    n = problem.num_clients
    strategy = FlowerFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                            initial_parameters=ndarrays_to_parameters([problem.x0.numpy()]))
    _, final = flower_loop(strategy, clients, rounds)
    return final


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def cpu_timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a loaded machine the CPU time is what an idle one would take."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def aggregation_only(num_clients: int, dim: int, repeats: int) -> tuple[float, float]:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.server.strategy import FedAvg as FlowerFedAvg

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(dim, dtype=torch.float64)
    deltas = torch.randn(num_clients, dim, generator=g, dtype=torch.float64)
    updates = {i: deltas[i] for i in range(num_clients)}
    n = {i: 10 + i % 7 for i in range(num_clients)}
    alg = FedAvg().setup(num_clients, dim)
    results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([(x + deltas[i]).numpy()]), n[i], {}))
               for i in range(num_clients)]
    flower = FlowerFedAvg()
    lab_t, fl_t = [], []
    for _ in range(repeats):
        lab_t.append(timed(alg.aggregate, x, updates, n, 0)[0])
        fl_t.append(timed(flower.aggregate_fit, 1, results, [])[0])
    return statistics.median(lab_t), statistics.median(fl_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on the shared 2-core machine)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    steps, lr = 5, 0.05
    big = (200, 20) if args.quick else (1000, 100)
    cmp = (50, 10) if args.quick else (100, 20)

    # 1. throughput at the target size
    problem = least_squares(num_clients=big[0], dim=10, samples_per_client=20, seed=0)
    run_lab(problem, 2, steps, lr)  # warm-up
    lab_big = [cpu_timed(run_lab, problem, big[1], steps, lr) for _ in range(repeats)]
    t_big = statistics.median(w for w, _ in lab_big)
    cpu_big = statistics.median(c for _, c in lab_big)

    # 2. against Flower's server loop, interleaved
    small = least_squares(num_clients=cmp[0], dim=10, samples_per_client=20, seed=1)
    lab_t, fl_t = [], []
    for _ in range(repeats):
        t_lab, x_lab = timed(run_lab, small, cmp[1], steps, lr)
        t_fl, x_fl = timed(run_flower, small, cmp[1], steps, lr)
        np.testing.assert_allclose(x_lab, x_fl, rtol=1e-9, atol=1e-9)
        lab_t.append(t_lab)
        fl_t.append(t_fl)
    t_lab, t_fl = statistics.median(lab_t), statistics.median(fl_t)
    agg_lab, agg_fl = aggregation_only(big[0], 10, max(3, repeats))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Federated simulator benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} torch threads, load average {load:.1f} at the end (shared machine). Medians of "
        f"{repeats} interleaved repeats. FedAvg, least squares d = 10, 20 examples per client, full participation, "
        f"K = {steps} full-batch local steps.",
        "",
        "| run | clients x rounds | wall time (s) | client-rounds / s (wall) |",
        "| --- | --- | ---: | ---: |",
        f"| lab simulator (vectorized) | {big[0]} x {big[1]} | {t_big:.2f} | {big[0] * big[1] / t_big:,.0f} |",
        f"| lab simulator (vectorized) | {cmp[0]} x {cmp[1]} | {t_lab:.3f} | {cmp[0] * cmp[1] / t_lab:,.0f} |",
        f"| Flower server loop in-process (Server + FedAvg strategy + NumPyClients) | {cmp[0]} x {cmp[1]} | "
        f"{t_fl:.3f} | {cmp[0] * cmp[1] / t_fl:,.0f} |",
        "",
        f"CPU time of the process for the {big[0]} x {big[1]} run: {cpu_big:.2f} s "
        f"({big[0] * big[1] / cpu_big:,.0f} client-rounds per CPU second); the wall time above is longer "
        f"because the machine was shared.",
        "",
        f"Wall-time ratio Flower server loop / lab simulator (same FedAvg run, same final model): "
        f"**{t_fl / t_lab:.1f}x**.",
        "",
        f"Aggregation alone, {big[0]} client updates of d = 10: lab `FedAvg.aggregate` {agg_lab * 1e3:.2f} ms, "
        f"Flower `FedAvg.aggregate_fit` {agg_fl * 1e3:.2f} ms (ratio {agg_fl / agg_lab:.1f}x).",
        "",
        "Flower's simulation engine (`flwr.simulation`) needs Ray, which is not installed here, so the comparison "
        "runs Flower's own server loop (`flwr.server.Server`, Flower's `FedAvg`) with in-process client proxies: "
        "no Ray processes, no transport, a lower bound on the real engine's time.",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(table + "\n")


if __name__ == "__main__":
    main()
