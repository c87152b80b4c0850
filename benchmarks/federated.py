"""Federated runs, like with like: where the time goes in the lab simulator and in Flower.

    python benchmarks/federated.py            # writes benchmarks/results/federated.md
    python benchmarks/federated.py --quick    # smaller sizes, one repeat, no file (a smoke run)

Three ratios, each between two runs that compute the same thing (checked: same final model):

(a) **Per-client Python loop, lab vs Flower's simulation engine.** Both run the same client code,
    ``lab.federated.wire.client_round``, once per participating client per round: the lab calls
    it in a plain loop in this process (:class:`lab.federated.wire.PerClientLoop`); Flower's
    engine (``flwr.simulation.run_simulation``, Ray backend, the lab's ``ServerApp``/``ClientApp``)
    sends each client a message, runs the ClientApp in a Ray worker and returns the reply. The
    ratio is Flower's cost of messages, serialization and worker dispatch per client-round. Ray's
    start-up (tens of seconds) is reported separately, not in the ratio.
(b) **Vectorized vs per-client loop, both in the lab.** The simulator trains all clients of a
    round at once (``torch`` batched over clients) against the same per-client loop as in (a):
    the gain of vectorizing small models, nothing to do with Flower.
(c) **Aggregation of the same in-memory updates.** 1000 client updates already in memory:
    ``lab.federated.FedAvg.aggregate`` on a dict of tensors against Flower's own weighted average
    ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords`` on the same updates held as
    Flower ``RecordDict`` replies (its in-memory format; no network). A plain numpy weighted sum
    is timed too, as the floor both are measured against.

Timings are medians of interleaved repeats in one process on a shared 2-core machine; only the
ratios are meaningful, and the load average is printed with them.
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

from lab.experiments.federated import FederatedConfig, components
from lab.federated import simulate
from lab.federated.fedavg import FedAvg
from lab.federated.wire import PerClientLoop

RESULT = pathlib.Path(__file__).resolve().parent / "results" / "federated.md"


def lab_run(cfg: FederatedConfig, *, per_client: bool):
    problem, algorithm, participation, faults = components(cfg)
    loop = PerClientLoop(problem, cfg.algorithm, seed=cfg.seed) if per_client else None
    start = time.perf_counter()
    h = simulate(problem, algorithm, participation, cfg.rounds, cfg.local_steps, cfg.lr, cfg.seed,
                 faults=faults, record_clients=False, eval_every=cfg.rounds, local_training=loop)
    return time.perf_counter() - start, np.array(h.artifacts["x_final"])


def flower_run(cfg: FederatedConfig, repeats: int):
    """``repeats`` runs of cfg in one Flower simulation (one Ray start); returns (round times, x, total)."""
    from lab.federated.flower import run_flower_simulation

    start = time.perf_counter()
    histories = run_flower_simulation([cfg] * repeats)
    total = time.perf_counter() - start
    return [h.meta["rounds_wall_time"] for h in histories], np.array(histories[-1].artifacts["x_final"]), total


def aggregation(num_clients: int, dim: int, repeats: int) -> tuple[float, float, float]:
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(dim, dtype=torch.float64)
    deltas = torch.randn(num_clients, dim, generator=g, dtype=torch.float64)
    n = {i: 10 + i % 7 for i in range(num_clients)}
    updates = {i: deltas[i] for i in range(num_clients)}
    alg = FedAvg().setup(num_clients, dim)
    replies = [RecordDict({"arrays": ArrayRecord([deltas[i].numpy()]), "metrics": MetricRecord({"n": n[i]})})
               for i in range(num_clients)]
    arrays = deltas.numpy()
    weights = np.array([n[i] for i in range(num_clients)], dtype=np.float64)

    def numpy_floor():
        return (weights[:, None] * arrays).sum(0) / weights.sum()

    lab_out = alg.aggregate(x, updates, n, 0).numpy()
    flower_out = aggregate_arrayrecords(replies, "n").to_numpy_ndarrays()[0]
    np.testing.assert_allclose(lab_out, flower_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lab_out, numpy_floor(), rtol=1e-10, atol=1e-12)
    t_lab, t_fl, t_np = [], [], []
    for _ in range(repeats):
        for fn, out in ((lambda: alg.aggregate(x, updates, n, 0), t_lab),
                        (lambda: aggregate_arrayrecords(replies, "n"), t_fl), (numpy_floor, t_np)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(t_lab), statistics.median(t_fl), statistics.median(t_np)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat, no results file")
    parser.add_argument("--no-flower", action="store_true", help="skip (a) (no Ray start-up)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    base = dict(algorithm="fedavg", problem="least_squares", participation="bernoulli", p_mean=0.5, local_steps=5,
                lr=0.05)
    cfg_a = FederatedConfig(**base, num_clients=8 if args.quick else 20, rounds=3 if args.quick else 10)
    cfg_b = FederatedConfig(**base, num_clients=20 if args.quick else 100, rounds=5 if args.quick else 20)
    lines = ["# Federated benchmark: like with like", ""]

    # (a) per-client loop: lab vs Flower's simulation engine (same client code)
    flower = None
    if not args.no_flower:
        from lab.federated.flower import RayStartupTimeout

        lab_loop_a = [lab_run(cfg_a, per_client=True) for _ in range(repeats)]
        try:
            flower = flower_run(cfg_a, repeats)
        except RayStartupTimeout as exc:
            lines += [f"**(a)** not measured in this run: {exc}.", ""]
    if flower is not None:
        rounds_fl, x_fl, total_fl = flower
        np.testing.assert_allclose(lab_loop_a[0][1], x_fl, rtol=1e-12, atol=1e-12)
        t_loop_a = statistics.median(t for t, _ in lab_loop_a)
        t_fl = statistics.median(rounds_fl)
        lines += [
            f"**(a) Per-client loop, same client code** (`client_round`; FedAvg, {cfg_a.num_clients} clients, "
            f"{cfg_a.rounds} rounds, Bernoulli p=0.5, K={cfg_a.local_steps}):",
            "",
            "| run | wall time (s) |",
            "| --- | ---: |",
            f"| lab, plain Python loop over clients | {t_loop_a:.3f} |",
            f"| Flower simulation engine (Ray, {cfg_a.num_clients} SuperNodes), rounds only | {t_fl:.3f} |",
            f"| Flower simulation engine, whole `run_simulation` ({repeats} runs, incl. Ray start-up) | {total_fl:.1f} |",
            "",
            f"Ratio Flower engine / lab loop: **{t_fl / t_loop_a:.1f}x** (messages, serialization and Ray worker "
            f"dispatch per client-round; Ray start-up excluded).",
            "",
        ]

    # (b) vectorized vs per-client loop, interleaved
    vec, loop = [], []
    lab_run(cfg_b, per_client=False)  # warm-up
    for _ in range(repeats):
        t_v, x_v = lab_run(cfg_b, per_client=False)
        t_l, x_l = lab_run(cfg_b, per_client=True)
        np.testing.assert_allclose(x_v, x_l, rtol=1e-12, atol=1e-12)
        vec.append(t_v)
        loop.append(t_l)
    t_vec, t_loop = statistics.median(vec), statistics.median(loop)
    lines += [
        f"**(b) Vectorized vs per-client loop, both lab** (FedAvg, {cfg_b.num_clients} clients, {cfg_b.rounds} rounds):",
        "",
        f"lab vectorized {t_vec:.3f} s, lab per-client loop {t_loop:.3f} s: ratio **{t_loop / t_vec:.1f}x** "
        f"(the gain of training all clients of a round in one batched torch call).",
        "",
    ]

    # (c) aggregation of the same in-memory updates
    a_lab, a_fl, a_np = aggregation(1000, 10, max(5, repeats))
    lines += [
        "**(c) Aggregation of 1000 in-memory updates** (d = 10, weighted by sample counts):",
        "",
        f"lab `FedAvg.aggregate` {a_lab * 1e3:.2f} ms, Flower `aggregate_arrayrecords` {a_fl * 1e3:.2f} ms, "
        f"numpy weighted sum {a_np * 1e3:.3f} ms: ratio Flower / lab **{a_fl / a_lab:.1f}x** "
        f"(the lab checks every update's client id, shape and finiteness in Python; Flower converts each update from its `Array` bytes; the numpy sum checks nothing).",
        "",
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += [f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 torch thread; "
              f"load average {load:.1f} at the end (shared machine). Medians of {repeats} interleaved repeats."]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(text + "\n")


if __name__ == "__main__":
    main()
