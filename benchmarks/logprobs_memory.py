"""Peak memory and time of chunked ``lab.rl.logprobs`` vs the naive full log-softmax.

Setting (the issue's): B = 8 sequences of T = 512 tokens, vocabulary V = 32,000, a tiny causal
transformer (2 layers, d = 64) whose output layer makes the (B, T, V) logits. Two uses:

- ``score``: log-probs and entropies without gradient (old / reference log-probs of a rollout);
- ``train``: log-probs with gradient, then ``backward()`` of their sum (the policy update).

Memory: each (method, use) runs in a fresh subprocess; the peak is the growth of the process's
resident set high-water mark (``VmHWM``, reset after a small warm-up call) during one call (Linux). Time: medians
of interleaved repeats in this process. Run: ``python benchmarks/logprobs_memory.py``; the table is
printed and written to ``benchmarks/results/logprobs_memory.md``.
"""
from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import time

import torch

B, T, V = 8, 512, 32_000
REPEATS = 5
ROOT = pathlib.Path(__file__).resolve().parent


def _setup():
    from lab.models.transformer import TinyTransformer

    torch.manual_seed(0)
    model = TinyTransformer(V, d_model=64, n_layers=2, n_heads=4, max_len=T)
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))
    return model, ids


def _call(model, ids, method: str, use: str) -> None:
    from lab.rl.token_logprobs import logprobs, naive_logprobs

    fn = logprobs if method == "chunked" else naive_logprobs
    if use == "score":
        with torch.no_grad():
            fn(model, ids)
    else:
        model.zero_grad(set_to_none=True)
        lp, _ = fn(model, ids)
        lp.sum().backward()


def _status_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _measure_memory(method: str, use: str) -> None:
    """Subprocess body: print the peak RSS growth (MiB) of one call.

    The high-water mark is reset first (``/proc/self/clear_refs``), since a child process starts
    with its parent's peak; growth = VmHWM after the call − VmRSS before it.
    """
    torch.set_num_threads(1)
    model, ids = _setup()
    _call(model, ids[:1, :16], method, use)                       # warm-up: kernels, allocator
    pathlib.Path("/proc/self/clear_refs").write_text("5")          # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    _call(model, ids, method, use)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def memory(method: str, use: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory", method, use], capture_output=True, text=True,
                         check=True, cwd=ROOT.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def timings(use: str) -> dict[str, float]:
    torch.set_num_threads(1)
    model, ids = _setup()
    times = {"naive": [], "chunked": []}
    for _ in range(REPEATS):
        for method in ("naive", "chunked"):                     # interleaved
            start = time.perf_counter()
            _call(model, ids, method, use)
            times[method].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    from lab.rl.token_logprobs import DEFAULT_CHUNK_ELEMENTS

    uses = ("score", "train")
    mem = {use: {m: memory(m, use) for m in ("naive", "chunked")} for use in uses}   # before any timing
    rows = []
    for use in uses:
        t = timings(use)
        m = mem[use]
        rows.append((use, m["naive"], m["chunked"], m["chunked"] / m["naive"], t["naive"], t["chunked"],
                     t["chunked"] / t["naive"]))
    chunk = max(1, DEFAULT_CHUNK_ELEMENTS // (B * V))
    lines = [f"Chunked vs naive log-probs, B={B}, T={T}, V={V:,}, tiny transformer (2 layers, d=64), "
             f"CPU, 1 thread, chunk = {chunk} positions; memory = peak RSS growth (VmHWM) of one call "
             f"(fresh process), time = median of {REPEATS} interleaved repeats.",
             "",
             "| use | naive peak (MiB) | chunked peak (MiB) | memory ratio | naive time (s) | chunked time (s) | time ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for use, mn, mc, mr, tn, tc, tr in rows:
        lines.append(f"| {use} | {mn:.0f} | {mc:.0f} | {mr:.2f}x | {tn:.2f} | {tc:.2f} | {tr:.2f}x |")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "results" / "logprobs_memory.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# logprobs_memory\n\n" + table + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--memory":
        _measure_memory(sys.argv[2], sys.argv[3])
    else:
        main()
