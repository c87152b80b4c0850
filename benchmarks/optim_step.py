"""Per-step time of the lab's elementwise optimizers, eager and fused, against torch's AdamW.

    python benchmarks/optim_step.py              # writes benchmarks/results/optim_step.md
    python benchmarks/optim_step.py --quick      # 3 rounds, 3 optimizers (a smoke run)
    python benchmarks/optim_step.py --only lion adabelief

Setup: 40 float32 tensors on the CPU (30 matrices 512 x 512 and 10 vectors of 512: 7.87M
parameters) with fixed random gradients, shared by every optimizer (each keeps its own state),
one torch thread. Anchors, all in the same process:

- ``torch.optim.AdamW(foreach=True)`` (the eager multi-tensor path),
- ``torch.optim.AdamW(fused=True)`` (torch's fused kernel: one pass over memory per tensor),
- ``torch.compile(AdamW(foreach=False).step)``, compiled once before timing,
- a memory-traffic floor per optimizer: the bytes one update must read and write (parameter,
  gradient and each state tensor read once, parameter and state written once; e.g. AdamW reads
  p, g, m, v and writes p, m, v: 7 x 4 bytes per parameter) divided by the copy bandwidth
  measured with ``torch._foreach_copy_`` on the same tensors.

Every optimizer takes 6 warm-up steps (so AdaBelief is past its 5 SGD steps, and the fused
paths are compiled), then all runners are timed in interleaved rounds (a fresh random order per
round, ``--steps`` steps per timing); the table gives the median per-step time. The finiteness
check (``check_finite``: one sum per gradient and one host sync per step) is on in every lab row;
its cost is measured against ``check_finite=False`` on the eager path, and a last section puts it
in a whole training step (forward, backward and step of an MLP with the same 40 tensors).
Compile time (the first fused step, paid once per process) is reported in its own column.

Targets (issue 19): fused <= 1.3x AdamW fused, eager <= 1.0x AdamW foreach. Timings on a shared
machine are noisy: the load average is printed, and only ratios measured in one process mean
anything.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import random
import statistics
import time

import torch

from lab.optim import _fused
from lab.optim._common import check_finite
from lab.registry import make

SPECS = {  # spec -> tensors read + written per parameter by one update (the traffic floor)
    "signsgd": 3, "signsgd(momentum=0.9)": 5, "lion": 5, "lion_kappa(kappa='l1')": 5,
    "lion_kappa(kappa='l2')": 5, "adabelief": 7, "adabelief(rectify=False)": 7, "diffgrad": 9,
    "adamp": 7, "sgdp(momentum=0.9)": 5, "agd(delta=1e-5)": 7,
}
ADAMW_TRAFFIC = 7
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


def fresh_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of ``params`` sharing the gradients (each optimizer moves its own weights)."""
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_(True)
        q.grad = p.grad
        out.append(q)
    return out


def mlp(seed: int = 0) -> torch.nn.Module:
    """The benchmark's 40 tensors as a model: 30 Linear(512, 512) layers, the first 10 with a bias."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i in range(30):
        layers += [torch.nn.Linear(512, 512, bias=i < 10), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def training_step_section(specs: list[str], rounds: int, batch: int) -> list[str]:
    """What the finiteness check costs a whole training step (forward, backward, eager step).

    Same parameter shapes as the step table, as an MLP; a step is ``zero_grad``, an MSE loss on a
    fixed random batch, ``backward`` and the optimizer's eager ``step``, with the check on and
    off, interleaved. The gradients here are freshly written by ``backward`` (in the step table
    they are the same tensors every step).
    """
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, 512, generator=gen), torch.randn(batch, 512, generator=gen)
    runners = {}
    for spec in specs:
        for check in (True, False):
            model = mlp()
            opt = make("optimizer", spec, model.parameters(), lr=1e-6, check_finite=check)

            def step(model=model, opt=opt) -> None:
                opt.zero_grad(set_to_none=False)
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()

            runners[(spec, check)] = step
            if check:
                group = opt.param_groups[0]
                params = [p for p in group["params"]]

                def check_only(opt=opt, group=group, params=params) -> None:
                    check_finite(opt, group, params, [p.grad for p in params])

                runners[(spec, "check")] = check_only
    for step in runners.values():
        for _ in range(3):
            step()
    times: dict = {key: [] for key in runners}
    order = list(runners)
    rng = random.Random(1)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            for _ in range(3):
                runners[key]()
            times[key].append((time.perf_counter() - start) / 3)
    med = {key: statistics.median(ts) for key, ts in times.items()}
    out = ["", f"## The finiteness check in a whole training step (batch {batch})", "",
           "| optimizer | training step ms | same, check_finite=False | difference | "
           "check alone ms | check / training step |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for spec in specs:
        on, off, alone = med[(spec, True)], med[(spec, False)], med[(spec, "check")]
        out.append(f"| {spec} | {1e3 * on:.1f} | {1e3 * off:.1f} | {100 * (on / off - 1):+.1f}% | "
                   f"{1e3 * alone:.2f} | {100 * alone / on:.1f}% |")
    out += ["", "A training step here is forward + backward + the eager optimizer step of an MLP "
            f"with the table's 40 tensors (30 Linear(512, 512) layers, batch {batch}, one thread); "
            "*difference* is that step with ``check_finite=True`` against ``check_finite=False`` "
            "(two noisy medians); *check alone* times the check by itself on the model's fresh "
            "gradients in the same rounds, and the last column divides it by the training step. "
            "Medians of interleaved rounds of 3 steps."]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--only", nargs="*", help="optimizer specs to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 steps, 3 optimizers")
    parser.add_argument("--batch", type=int, default=64,
                        help="batch size of the training-step section (check cost in a whole step)")
    args = parser.parse_args()
    rounds, steps = (3, 2) if args.quick else (args.rounds, args.steps)
    specs = args.only or (["signsgd", "lion", "adabelief"] if args.quick else list(SPECS))
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    params, grads = make_tensors()
    n_params = sum(p.numel() for p in params)
    bytes_per_tensor_pass = 4 * n_params

    copy_dst = [torch.empty_like(g) for g in grads]

    def copy_step() -> None:  # reads one tensor list, writes another: 2 passes
        torch._foreach_copy_(copy_dst, grads)

    runners: dict[str, object] = {"copy (bandwidth probe)": copy_step}
    adamw_foreach = torch.optim.AdamW(fresh_params(params), lr=1e-6, foreach=True)
    adamw_fused = torch.optim.AdamW(fresh_params(params), lr=1e-6, fused=True)
    adamw_compiled_opt = torch.optim.AdamW(fresh_params(params), lr=torch.tensor(1e-6), foreach=False)
    compiled_step = torch.compile(adamw_compiled_opt.step)
    runners["torch AdamW foreach"] = adamw_foreach.step
    runners["torch AdamW fused"] = adamw_fused.step
    runners["torch.compile(AdamW.step)"] = compiled_step
    compile_time: dict[str, float] = {}
    start = time.perf_counter()
    compiled_step()
    compile_time["torch.compile(AdamW.step)"] = time.perf_counter() - start
    fused_opts = {}
    for spec in specs:
        runners[f"{spec} eager"] = make("optimizer", spec, fresh_params(params), lr=1e-6).step
        runners[f"{spec} eager, check_finite=False"] = make(
            "optimizer", spec, fresh_params(params), lr=1e-6, check_finite=False).step
        fused_opts[spec] = make("optimizer", spec, fresh_params(params), lr=1e-6, fused=True)
        runners[f"{spec} fused"] = fused_opts[spec].step
        print(f"compiling {spec} ...", flush=True)
        fused_opts[spec].step()
        compile_time[f"{spec} fused"] = _fused.compile_seconds(fused_opts[spec])
        unchecked = make("optimizer", spec, fresh_params(params), lr=1e-6, fused=True, check_finite=False)
        runners[f"{spec} fused, check_finite=False"] = unchecked.step
    for step in runners.values():  # warm-up
        for _ in range(6):
            step()
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            for _ in range(steps):
                runners[name]()
            times[name].append((time.perf_counter() - start) / steps)
    load_after = os.getloadavg()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    bandwidth = 2 * bytes_per_tensor_pass / med["copy (bandwidth probe)"]  # bytes / s
    foreach, fused, compiled = (med["torch AdamW foreach"], med["torch AdamW fused"],
                                med["torch.compile(AdamW.step)"])

    def floor(traffic: int) -> float:
        return traffic * bytes_per_tensor_pass / bandwidth

    lines = [
        "# Optimizer step time (CPU): eager and fused paths against torch's AdamW",
        "",
        f"{len(params)} float32 tensors, {n_params / 1e6:.2f}M parameters; torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"median of {rounds} interleaved rounds of {steps} steps. Load average (1 min) "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after: the machine was "
        f"{'shared with other work' if max(load_before[0], load_after[0]) > 1.5 else 'nearly idle'}. "
        f"Copy bandwidth measured on the same tensors: {bandwidth / 1e9:.1f} GB/s.",
        "",
        "Anchors: AdamW foreach {:.2f} ms, AdamW fused {:.2f} ms, compiled AdamW {:.2f} ms "
        "(compile {:.1f} s); AdamW's traffic floor {:.2f} ms.".format(
            1e3 * foreach, 1e3 * fused, 1e3 * compiled, compile_time["torch.compile(AdamW.step)"],
            1e3 * floor(ADAMW_TRAFFIC)),
        "",
        "| optimizer | eager ms | eager / AdamW foreach | check cost (eager) | fused ms | "
        "fused / AdamW fused | same, check_finite=False | fused / compiled AdamW | fused / floor | "
        "compile s | targets |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for spec in specs:
        eager, unchecked = med[f"{spec} eager"], med[f"{spec} eager, check_finite=False"]
        fused_ms, fused_unchecked = med[f"{spec} fused"], med[f"{spec} fused, check_finite=False"]
        ok = eager <= foreach and fused_ms <= 1.3 * fused
        lines.append(
            f"| {spec} | {1e3 * eager:.2f} | {eager / foreach:.2f} | {100 * (eager / unchecked - 1):+.1f}% | "
            f"{1e3 * fused_ms:.2f} | {fused_ms / fused:.2f} | {fused_unchecked / fused:.2f} | "
            f"{fused_ms / compiled:.2f} | {fused_ms / floor(SPECS[spec]):.2f} | "
            f"{compile_time[f'{spec} fused']:.1f} | {'yes' if ok else 'no'} |")
    lines += [
        "",
        "Columns: *eager / AdamW foreach*: the default path (``torch._foreach_*``, finiteness check "
        "on) against torch's eager AdamW (target <= 1.0). *check cost*: the eager step with the "
        "finiteness check against the same step with ``check_finite=False``. *fused / AdamW fused*: "
        "``fused=True`` against torch's fused AdamW kernel (target <= 1.3; the check, one more read "
        "of the gradients, is in the lab's row and not in torch's, so the next column repeats the "
        "ratio without it). *fused / compiled "
        "AdamW*: against ``torch.compile`` of AdamW's step. *fused / floor*: against the time to "
        "move the update's bytes at the measured copy bandwidth. *compile s*: the first fused step, "
        "paid once per process (the inductor cache on disk makes later processes faster).",
    ]
    lines += training_step_section(specs, rounds, args.batch)
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick and not args.only:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(table)
        print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
