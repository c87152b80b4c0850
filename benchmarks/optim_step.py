"""Per-step wall time of the lab's elementwise optimizers against torch.optim.AdamW(foreach=True).

    python benchmarks/optim_step.py            # writes benchmarks/results/optim_step.md
    python benchmarks/optim_step.py --quick    # fewer repeats (a smoke run)

Setup: 40 float32 tensors on the CPU (30 matrices 512 x 512 and 10 vectors of 512: 7.87M
parameters) with fixed random gradients, shared by every optimizer (each keeps its own state).
Every optimizer takes 3 warm-up steps (so AdaBelief is past its 5 SGD steps by the time it is
timed, see below), then the optimizers are timed in interleaved rounds (a fresh random order per
round, ``--steps`` steps per timing); the table reports the median per-step time over rounds
and two ratios: against ``torch.optim.AdamW(foreach=True)`` and against a floor, one
``torch._foreach_add_(params, grads, alpha=-lr)`` over the same tensors (the cheapest possible
elementwise update: one read of the gradients, one read-write of the parameters).
The target is a ratio of at most 1.3 to AdamW-foreach. Timings depend on the machine and its
load; only the ratios measured in one process are meaningful. The last column is the same ratio
in process CPU time (less sensitive to other processes on a shared machine).
"""
from __future__ import annotations

import argparse
import pathlib
import platform
import random
import statistics
import time

import torch

from lab.registry import make

SPECS = (
    "signsgd", "signsgd(momentum=0.9)", "lion", "lion_kappa(kappa='l1')", "lion_kappa(kappa='l2')",
    "adabelief", "adabelief(rectify=False)", "diffgrad", "adamp", "sgdp(momentum=0.9)",
    "agd(delta=1e-5)",
)
RESULT = pathlib.Path(__file__).resolve().parent / "results" / "optim_step.md"


def make_tensors(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(512, 512)] * 30 + [(512,)] * 10
    params = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    for p, g in zip(params, grads):
        p.requires_grad_(True)
        p.grad = g
    return params, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 steps")
    args = parser.parse_args()
    rounds, steps = (3, 2) if args.quick else (args.rounds, args.steps)
    torch.set_num_threads(args.threads)
    params, grads = make_tensors()
    n_params = sum(p.numel() for p in params)

    def floor_step() -> None:
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-1e-6)

    runners = {"floor: one torch._foreach_add_": floor_step}
    adamw = torch.optim.AdamW(params, lr=1e-6, foreach=True)
    runners["torch.optim.AdamW(foreach=True)"] = adamw.step
    for spec in SPECS:
        runners[spec] = make("optimizer", spec, params, lr=1e-6).step
        runners[spec + " [per-tensor loop]"] = make("optimizer", spec, params, lr=1e-6,
                                                    foreach=False).step
    for step in runners.values():  # warm-up: state allocation, AdaBelief past its 5 SGD steps
        for _ in range(6):
            step()
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                runners[name]()
            times[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - start_cpu) / steps)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    median_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    ref_cpu = median_cpu["torch.optim.AdamW(foreach=True)"]
    ref = median["torch.optim.AdamW(foreach=True)"]
    floor = median["floor: one torch._foreach_add_"]
    lines = [
        "# Optimizer step time (CPU)",
        "",
        f"{len(params)} float32 tensors, {n_params / 1e6:.2f}M parameters; torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}; median of {rounds} "
        f"interleaved rounds of {steps} steps. Target: foreach path <= 1.3x AdamW-foreach.",
        "",
        "| optimizer | ms / step | vs AdamW-foreach | vs floor | within 1.3x | vs AdamW, CPU time |",
        "| --- | ---: | ---: | ---: | :---: | ---: |",
    ]
    for name in sorted(runners, key=lambda n: (n.startswith("floor") is False,
                                                n.startswith("torch") is False, n)):
        ratio = median[name] / ref
        loop = name.endswith("[per-tensor loop]") or name.startswith(("floor", "torch"))
        mark = "" if loop else ("yes" if ratio <= 1.3 else "no")
        lines.append(f"| {name} | {median[name] * 1e3:.2f} | {ratio:.2f} | "
                     f"{median[name] / floor:.2f} | {mark} | {median_cpu[name] / ref_cpu:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    if not args.quick:
        RESULT.write_text(table)
        print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
