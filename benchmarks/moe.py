"""MoE balancing benchmark: router throughput and each balancer's overhead on a tiny MoE transformer.

    python benchmarks/moe.py            # prints a markdown table, writes benchmarks/results/moe.md

1. Router simulation throughput: tokens per second of the routing loop (TopKRouter forward with
   aux_free_bias selection + bias update, no gradient; E = 16, k = 2, d = 16, 16384 tokens per
   step), and of the full ``moe_routing_sim`` experiment (router SGD, metrics, History).
2. Balancer overhead: the time of one training step (forward, backward, AdamW step, controller
   update) of the tiny MoE transformer (2 layers, d = 32, E = 8, k = 2, 16 x 24 tokens) with each
   balancer, divided by the time with no balancing. Medians over interleaved repeats, one thread.
"""
from __future__ import annotations

import os
import pathlib
import platform
import statistics
import time

import torch

from lab.experiments import run
from lab.experiments.moe import BALANCERS, build_balancer
from lab.moe import AuxFreeBias, TopKRouter
from lab.moe.transformer import MoETransformer
from toy_envs.routing import RoutingStream, TopicMarkovCorpus

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "moe.md"


@torch.no_grad()
def router_throughput(steps: int = 60, tokens: int = 16384, repeats: int = 3) -> float:
    """Median tokens/s of route + bias update on a skewed stream."""
    stream = RoutingStream(16, 16, skew=2.0, drift=0.01)
    rates = []
    for r in range(repeats):
        bal = AuxFreeBias(16)
        router = TopKRouter(16, 16, 2, bal)
        router.gate.weight.copy_(4.0 * stream.centroids)
        g = torch.Generator().manual_seed(r)
        batches = [stream.sample(tokens, s, g)[0] for s in range(steps)]
        start = time.perf_counter()
        for x in batches:
            bal.update(router(x).load)
        rates.append(steps * tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def experiment_throughput(steps: int = 100, batch: int = 8192) -> float:
    """Tokens/s of the whole ``moe_routing_sim`` experiment (stream, SGD, metrics, History)."""
    h = run("moe_routing_sim", steps=steps, batch=batch, n_experts=16)
    return steps * batch / h.meta["wall_time"]


def _train_step_time(model: MoETransformer, opt: torch.optim.Optimizer, tokens: torch.Tensor, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        logits, routes = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        (loss + model.aux_loss(routes)).backward()
        opt.step()
        model.update_balancers(routes)
    return (time.perf_counter() - start) / n


def balancer_overhead(repeats: int = 7, steps: int = 10) -> dict[str, float]:
    """Median seconds per training step for each balancer (interleaved repeats)."""
    corpus = TopicMarkovCorpus(32, 8, skew=1.0)
    tokens, _ = corpus.sample(16, 25, generator=torch.Generator().manual_seed(0))
    setups = {}
    for name in BALANCERS:
        model = MoETransformer(32, 32, 2, 2, 8, 2, max_len=24, generator=torch.Generator().manual_seed(0),
                               make_balancer=lambda i, name=name: build_balancer(name, 8, aux_coef=1e-2, u=1e-3,
                                                                                schedule="sign"))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        _train_step_time(model, opt, tokens, 3)  # warm-up
        setups[name] = (model, opt)
    times: dict[str, list[float]] = {name: [] for name in BALANCERS}
    for _ in range(repeats):
        for name, (model, opt) in setups.items():
            times[name].append(_train_step_time(model, opt, tokens, steps))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> str:
    torch.set_num_threads(1)
    router = router_throughput()
    full = experiment_throughput()
    step = balancer_overhead()
    base = step["none"]
    lines = [
        "# MoE balancing benchmark",
        "",
        f"Measured with `python benchmarks/moe.py` on {platform.machine()} CPU ({os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} while measuring), torch {torch.__version__}, one thread. Absolute times scale "
        "with the machine's load; the ratios are medians of interleaved repeats.",
        "",
        "| router simulation | tokens / s |",
        "| --- | ---: |",
        f"| route + aux_free_bias update (E=16, k=2, 16384 tokens/step) | {router:,.0f} |",
        f"| full `moe_routing_sim` experiment (router SGD, metrics, History) | {full:,.0f} |",
        "",
        "| balancer | ms / training step | ratio vs none |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {1e3 * t:.1f} | {t / base:.2f} |" for name, t in step.items()]
    table = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()
