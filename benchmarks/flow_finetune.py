"""Where ``flow_finetune`` spends its time at its defaults, and what removing the waste bought.

    python benchmarks/flow_finetune.py        # prints markdown, writes benchmarks/results/flow_finetune.md

1. A profile of one default run (Flow-GRPO, 40 rollouts of 64 samples, 10 SDE steps, two minibatch
   updates per rollout, the 3×128 pretrained field): the functions with the largest cumulative time.
2. The waste removed, each as a ratio measured in this process, interleaved, medians:
   - re-scoring the stored SDE steps under the current field (the PPO ratio's log-probs) took one
     forward per step (10 forwards and a 10-way backward per update); ``transition_logprobs(...,
     batched=True)`` sends all steps through the field in one call;
   - guided sampling took two forwards per step (conditional and unconditional); ``GuidedVelocity``
     now stacks both into one forward of 2N rows.
3. The whole default run with both paths, for scale (the experiment itself always uses the fast ones).

The pretraining of the shared field (``PRETRAINED``: 1000 Adam steps) is paid once per process and is
reported separately. Absolute times depend on the machine's load; the ratios less so.
"""
from __future__ import annotations

import cProfile
import io
import os
import pathlib
import platform
import pstats
import statistics
import time

import torch

from lab.experiments import run
from lab.experiments.flow import pretrained_velocity, unconditional
from lab.flow import core
from lab.flow.apg import GuidedVelocity
from lab.flow.core import rollout, sigmas, transition_logprobs

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "flow_finetune.md"


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def rescoring_ratio(repeats: int = 15) -> tuple[float, float]:
    """(per-step ms, batched ms) of re-scoring a 32-sample minibatch of 10 SDE steps, with backward."""
    model = pretrained_velocity()
    gen = torch.Generator().manual_seed(0)
    traj = rollout(unconditional(model), torch.randn(32, 2, generator=gen), sigmas(10), schedule="flow_grpo",
                   generator=gen)

    def step(batched: bool):
        def go():
            model.zero_grad()
            logp, _ = transition_logprobs(unconditional(model), traj, batched=batched)
            logp.sum().backward()
        return go

    loop, batched = step(False), step(True)
    pairs = [(_median_ms(loop, 1), _median_ms(batched, 1)) for _ in range(repeats)]   # interleaved
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def guidance_ratio(repeats: int = 15) -> tuple[float, float]:
    """(two forwards ms, one stacked forward ms) of 20 guided Euler steps over 256 samples."""
    model = pretrained_velocity().requires_grad_(False)
    cond = torch.arange(256) % 8
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    grid = sigmas(20)

    class TwoForwards(GuidedVelocity):          # the earlier path: D_c and D_u from separate calls
        def __call__(self, x, t):
            if t != self._t:
                self._base, self._t = self.buffer, t
            from lab.flow.apg import apg_guidance
            x0_c, x0_u = x - t * self.model(x, t, self.cond), x - t * self.model(x, t, None)
            x0, buffer = apg_guidance(x0_c, x0_u, buffer=self._base, **self.kwargs)
            self.buffer = buffer.detach()
            return (x - x0) / t

    def sample(cls):
        def go():
            with torch.no_grad():
                rollout(cls(model, cond, guidance_scale=20.0, eta=0.0, norm_threshold=0.2, momentum=0.0), noise, grid)
        return go

    two, one = sample(TwoForwards), sample(GuidedVelocity)
    pairs = [(_median_ms(two, 1), _median_ms(one, 1)) for _ in range(repeats)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def whole_run(repeats: int = 3) -> tuple[float, float]:
    """(seconds with the per-step re-scoring, seconds as shipped) of the default ``flow_finetune``."""
    fast = core.transition_logprobs

    def slow(velocity, traj, steps=None, *, batched=False):
        return fast(velocity, traj, steps, batched=False)

    import lab.experiments.flow as flow

    times = {"per-step": [], "batched": []}
    for _ in range(repeats):
        for label, fn in (("per-step", slow), ("batched", fast)):
            flow.transition_logprobs = fn
            try:
                times[label].append(run("flow_finetune").meta["wall_time"])
            finally:
                flow.transition_logprobs = fast
    return statistics.median(times["per-step"]), statistics.median(times["batched"])


def profile_text(top: int = 12) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    run("flow_finetune")
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return "\n".join(lines[start:start + top + 1])


def main() -> str:
    torch.set_num_threads(1)
    start = time.perf_counter()
    pretrained_velocity()
    pretrain_s = time.perf_counter() - start
    run("flow_finetune", steps=2)                               # warm-up: imports, first-call costs
    loop_ms, batched_ms = rescoring_ratio()
    two_ms, one_ms = guidance_ratio()
    slow_s, fast_s = whole_run()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = "\n".join([
        "# flow_finetune: profile and waste removed",
        "",
        f"Measured with `python benchmarks/flow_finetune.py` on {platform.machine()} CPU "
        f"({os.cpu_count()} cores, load average {load:.1f} while measuring), torch {torch.__version__}, "
        "one thread. Ratios are medians of interleaved repeats in one process.",
        "",
        f"Pretraining the shared field (once per process): {pretrain_s:.1f} s.",
        "",
        "| what | before (ms) | after (ms) | after / before |",
        "| --- | ---: | ---: | ---: |",
        f"| re-score 10 SDE steps of 32 samples, with backward | {loop_ms:.1f} | {batched_ms:.1f} | "
        f"{batched_ms / loop_ms:.2f} |",
        f"| 20 guided Euler steps of 256 samples | {two_ms:.1f} | {one_ms:.1f} | {one_ms / two_ms:.2f} |",
        f"| whole default `flow_finetune` run (s) | {slow_s:.2f} | {fast_s:.2f} | {fast_s / slow_s:.2f} |",
        "",
        "Profile of one default run (cumulative time):",
        "",
        "```",
        profile_text(),
        "```",
        "",
    ])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
