"""MoE benchmark: the MoE layer's dispatch, router throughput, balancer overhead, a profile.

    python benchmarks/moe.py            # prints markdown tables, writes benchmarks/results/moe.md
    python benchmarks/moe.py --quick    # fewer repeats and tokens (a smoke run)

0. MoE layer dispatch: tokens per second of one forward + backward of ``MoELayer`` (d = 256, expert
   hidden 512, k = 2) with each dispatch - the Python loop over experts (the reference), the
   grouped GEMM (``torch.nn.functional.grouped_mm``) and the padded ``bmm`` - and of Hugging Face's
   ``MixtralSparseMoeBlock`` (same d, intermediate size 512, its eager per-expert loop and its
   ``grouped_mm`` experts implementation), for E = 8, 16, 64. Mixtral's experts are SwiGLU (three
   d x h matrices) where the lab's are a two-matrix GELU MLP: per token Mixtral does 1.5x the expert
   FLOPs, so the HF columns are also given per expert FLOP. Interleaved repeats, medians, ratios to
   the loop measured in the same process.

1. Router simulation throughput: tokens per second of the routing loop (TopKRouter forward with
   aux_free_bias selection + bias update, no gradient; E = 16, k = 2, d = 16, 16384 tokens per
   step), and of the full ``moe_routing_sim`` experiment (router SGD, metrics, History).
2. Balancer overhead: the time of one training step (forward, backward, AdamW step, controller
   update) of the tiny MoE transformer (2 layers, d = 32, E = 8, k = 2, 16 x 24 tokens) with each
   balancer, divided by the time with no balancing. Medians over interleaved repeats, one thread.
3. A profile of ``moe_transformer`` at its default config (cProfile, top functions by own time).
"""
from __future__ import annotations

import cProfile
import io
import os
import pathlib
import platform
import pstats
import statistics
import sys
import time

import torch

from lab.experiments import run
from lab.experiments.moe import BALANCERS, build_balancer
from lab.moe import AuxFreeBias, TopKRouter
from lab.moe.transformer import MoETransformer
from toy_envs.routing import RoutingStream, TopicMarkovCorpus

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "moe.md"


def _fwd_bwd(block, x: torch.Tensor) -> float:
    """Seconds of one forward + backward (gradients of the parameters and the input)."""
    x = x.detach().requires_grad_()
    start = time.perf_counter()
    out = block(x)
    y = out[0] if isinstance(out, tuple) else out
    y.backward(torch.ones_like(y))
    return time.perf_counter() - start


def layer_throughput(experts=(8, 16, 64), tokens: int = 1024, d: int = 256, hidden: int = 512, k: int = 2,
                     repeats: int = 5) -> dict[int, dict[str, float]]:
    """Median tokens/s of forward + backward for each dispatch and for HF's Mixtral block."""
    from lab.moe import MoELayer

    try:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    except ImportError:  # pragma: no cover - transformers is in the dev extra
        MixtralSparseMoeBlock = None
    results = {}
    for e in experts:
        g = torch.Generator().manual_seed(e)
        layer = MoELayer(d, e, k, d_hidden=hidden)
        variants = {}
        for impl in ("loop", "grouped_mm", "bmm"):
            variants[impl] = (lambda x, impl=impl: (setattr(layer, "impl", impl), layer(x))[1])
        if MixtralSparseMoeBlock is not None:
            for impl in ("eager", "grouped_mm"):
                cfg = MixtralConfig(hidden_size=d, intermediate_size=hidden, num_local_experts=e,
                                    num_experts_per_tok=k)
                cfg._experts_implementation = impl
                block = MixtralSparseMoeBlock(cfg)
                with torch.no_grad():
                    for p in block.parameters():
                        p.normal_(0.0, 0.02, generator=g)
                variants[f"hf_{impl}"] = block
        x = torch.randn(1, tokens, d, generator=g)
        for fn in variants.values():  # warm-up
            _fwd_bwd(fn, x)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                layer.zero_grad(set_to_none=True)
                times[name].append(_fwd_bwd(fn, x))
        results[e] = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    return results


def transformer_profile(top: int = 12) -> str:
    """cProfile of ``moe_transformer`` at its default config: the top functions by own time."""
    run("moe_transformer", steps=3)  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    h = run("moe_transformer")
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    return f"wall time {h.meta['wall_time']:.2f} s\n" + "\n".join(lines[start:start + top + 1])


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


def main(quick: bool = False) -> str:
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    layers = layer_throughput(tokens=256 if quick else 1024, repeats=2 if quick else 5)
    router = router_throughput(steps=10 if quick else 60)
    full = experiment_throughput(steps=20 if quick else 100)
    step = balancer_overhead(repeats=2 if quick else 7, steps=2 if quick else 10)
    profile = transformer_profile()
    base = step["none"]
    load_after = os.getloadavg()[0]
    lines = [
        "# MoE benchmark",
        "",
        f"Measured with `python benchmarks/moe.py` on {platform.machine()} CPU ({os.cpu_count()} cores, load average "
        f"{load_before:.1f} before and {load_after:.1f} after measuring - the machine is shared, so absolute times "
        f"scale with its load), torch {torch.__version__}, one thread. Ratios are medians of interleaved repeats "
        "in one process.",
        "",
        "## MoE layer: forward + backward, tokens / s (ratio to the loop)",
        "",
        f"d = 256, expert hidden = 512, k = 2, {256 if quick else 1024} tokens per call. HF = "
        "`MixtralSparseMoeBlock` (SwiGLU experts: 1.5x the lab expert's FLOPs per token; the last column "
        "scales HF's grouped_mm by 1.5 to compare per expert FLOP).",
        "",
        "| E | loop (reference) | grouped_mm | padded bmm | HF eager | HF grouped_mm | HF grouped_mm per FLOP |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e, r in layers.items():
        loop = r["loop"]
        cell = lambda name, scale=1.0: (f"{scale * r[name]:,.0f} ({scale * r[name] / loop:.2f}x)"  # noqa: E731
                                        if name in r else "n/a")
        lines.append(f"| {e} | {loop:,.0f} (1.00x) | {cell('grouped_mm')} | {cell('bmm')} | {cell('hf_eager')} | "
                     f"{cell('hf_grouped_mm')} | {cell('hf_grouped_mm', 1.5)} |")
    lines += [
        "",
        "## Router simulation",
        "",
        "| router simulation | tokens / s |",
        "| --- | ---: |",
        f"| route + aux_free_bias update (E=16, k=2, 16384 tokens/step) | {router:,.0f} |",
        f"| full `moe_routing_sim` experiment (router SGD, twin router, metrics, History) | {full:,.0f} |",
        "",
        "## Balancer overhead on the tiny MoE transformer",
        "",
        "| balancer | ms / training step | ratio vs none |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {1e3 * t:.1f} | {t / base:.2f} |" for name, t in step.items()]
    lines += ["", "## Profile of `moe_transformer` at its defaults", "", "```", profile, "```"]
    table = "\n".join(lines) + "\n"
    if not quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
