"""Throughput and peak memory of ``lab.rl.hf.CausalLMPolicy`` on random-init Qwen2-shaped models.

Two models (vocabulary 32,000, tied embeddings, grouped-query attention with 2 KV heads, SwiGLU at
8d/3): **~10M** parameters (d = 256, 4 layers) and **~50M** (d = 512, 12 layers). One batch of
B = 8 rows, prompts of P = 32 random tokens, responses of T = 64 tokens (no early stop):

- ``rollout``: ``policy.generate`` with the KV cache (the prompt once, then one token per step);
  response tokens per second.
- ``score``: log-probs and entropies of the responses without gradient (the old / reference
  log-probs of a rollout); response tokens per second.
- ``update``: one GRPO step: scoring with gradient, ``grpo`` loss, ``backward``, Adam step;
  response tokens per second.

``score`` and ``update`` run two ways: **chunked** (``CausalLMPolicy.score``: log-probs from the
last hidden states and the LM head, ``CHUNK`` = 16 positions at a time, logits recomputed in
backward) and **naive** (the (B, T, V) logits of the whole response at once, ``log_softmax``, ``gather``: what
``model(...).logits`` gives). Times: medians of interleaved repeats in one process. Peak memory:
on CPU, the growth of the resident-set high-water mark (``VmHWM``, reset after a warm-up on a
tiny batch) during one call in a fresh process (Linux); on CUDA, ``torch.cuda.max_memory_allocated`` growth. One
torch thread on CPU. Run: ``python benchmarks/hf_policy.py [--quick]``; the table is printed and
written to ``benchmarks/results/hf_policy.md``.
"""
from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent
B, P, T, V = 8, 32, 64, 32_000
CHUNK = 16
"""Positions per log-prob chunk: the (B, T, V) logits are 64 MiB in float32, the chunks 16 MiB."""
SIZES = {
    "10M": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
    "50M": dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=2),
}
QUICK = {"10M": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)}
REPEATS = 3


def build(size: dict, device: str):
    """A random-init Qwen2 policy, prompts and responses on ``device``."""
    import transformers

    from lab.rl.hf import CausalLMPolicy, config_for

    config = config_for("qwen2", vocab_size=V, pad_token_id=0, eos_token_id=1, bos_token_id=None,
                        tie_word_embeddings=True, max_position_embeddings=P + T, **size)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen2ForCausalLM(config)
    policy = CausalLMPolicy(model, ref_model=model, chunk_size=CHUNK)   # no reference copy: not measured
    g = torch.Generator(device=device).manual_seed(0)
    prompts = torch.randint(2, V, (B, P), generator=g, device=device)
    responses = torch.randint(2, V, (B, T), generator=g, device=device)
    return policy, prompts, responses


def naive_score(policy, prompts, responses):
    """Log-probs and entropies from the full (B, T, V) logits of the response."""
    mask = torch.ones(prompts.shape[0], prompts.shape[1] + responses.shape[1], dtype=torch.long,
                      device=prompts.device)
    hidden = policy._decode(torch.cat([prompts, responses], 1), mask)[0]
    logits = policy._logits(hidden[:, prompts.shape[1] - 1:-1]).float()            # (B, T, V)
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, responses[..., None])[..., 0], -(logp.exp() * logp).sum(-1)


def run(policy, prompts, responses, use: str, method: str, optimizer=None) -> None:
    from lab.rl.grpo import grpo_loss

    if use == "rollout":
        policy.generate(prompts, T, temperature=1.0, eos_id=-1)
        return
    score = policy.score if method == "chunked" else (lambda p, r: naive_score(policy, p, r))
    if use == "score":
        with torch.no_grad():
            result = score(prompts, responses)
        return
    result = score(prompts, responses)
    logprobs = result.logprobs if hasattr(result, "logprobs") else result[0]
    advantages = torch.linspace(-1, 1, prompts.shape[0], device=prompts.device)
    mask = torch.ones_like(logprobs, dtype=torch.bool)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), advantages, mask, beta=0.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timings(size: dict, device: str, repeats: int) -> dict[tuple[str, str], float]:
    policy, prompts, responses = build(size, device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-5)
    cases = [("rollout", "cached"), ("score", "naive"), ("score", "chunked"), ("update", "naive"),
             ("update", "chunked")]
    for use, method in cases:                                    # warm-up (Adam state included)
        run(policy, prompts[:2, :4], responses[:2, :4], use, method, optimizer)
    times: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    for _ in range(repeats):
        for use, method in cases:                                # interleaved
            _sync(device)
            start = time.perf_counter()
            run(policy, prompts, responses, use, method, optimizer)
            _sync(device)
            times[(use, method)].append(time.perf_counter() - start)
    return {c: statistics.median(v) for c, v in times.items()}


def _status_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _measure_memory(size_name: str, use: str, method: str, device: str, quick: bool) -> None:
    """Subprocess body: print the peak memory growth (MiB) of one call."""
    torch.set_num_threads(1)
    size = (QUICK if quick else SIZES)[size_name]
    policy, prompts, responses = build(size, device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-5)
    # warm-up on a tiny batch: kernels, gradient buffers and Adam's state (parameter-sized) exist
    # before the measured call, whose growth is then the batch's own activations and logits
    run(policy, prompts[:1, :4], responses[:1, :4], use, method, optimizer)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run(policy, prompts, responses, use, method, optimizer)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    else:
        pathlib.Path("/proc/self/clear_refs").write_text("5")     # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        run(policy, prompts, responses, use, method, optimizer)
        peak = (_status_kib("VmHWM") - before) / 1024
    print(json.dumps({"peak_mib": peak}))


def memory(size_name: str, use: str, method: str, device: str, quick: bool) -> float:
    args = [sys.executable, __file__, "--memory", size_name, use, method, device] + (["--quick"] if quick else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main(quick: bool = False) -> str:
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sizes = QUICK if quick else SIZES
    repeats = 1 if quick else REPEATS
    lines = [f"CausalLMPolicy on random-init Qwen2-shaped models, V={V:,}, B={B}, P={P}, T={T}, chunk={CHUNK}; "
             f"tokens/s = response tokens per second (median of {repeats} interleaved repeats); "
             "peak = memory growth of one call in a fresh process (CPU: VmHWM; CUDA: max allocated). "
             "CPU runs use one torch thread.", "",
             "| device | model | params | rollout tok/s | score tok/s naive / chunked | "
             "update tok/s naive / chunked | score peak MiB naive / chunked | update peak MiB naive / chunked |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ratios = []
    for device in devices:
        for name, size in sizes.items():
            mem = {(u, m): memory(name, u, m, device, quick) for u in ("score", "update")
                   for m in ("naive", "chunked")}                  # before any timing in this process
            t = timings(size, device, repeats)
            policy, _, _ = build(size, "cpu")
            n_params = sum(p.numel() for p in policy.parameters())
            tok = {c: B * T / s for c, s in t.items()}
            lines.append(
                f"| {device} | {name} | {n_params / 1e6:.1f}M | {tok[('rollout', 'cached')]:.0f} | "
                f"{tok[('score', 'naive')]:.0f} / {tok[('score', 'chunked')]:.0f} | "
                f"{tok[('update', 'naive')]:.0f} / {tok[('update', 'chunked')]:.0f} | "
                f"{mem[('score', 'naive')]:.0f} / {mem[('score', 'chunked')]:.0f} | "
                f"{mem[('update', 'naive')]:.0f} / {mem[('update', 'chunked')]:.0f} |")
            ratios.append((device, name,
                           t[("score", "chunked")] / t[("score", "naive")],
                           t[("update", "chunked")] / t[("update", "naive")],
                           mem[("score", "chunked")] / max(mem[("score", "naive")], 1e-9),
                           mem[("update", "chunked")] / max(mem[("update", "naive")], 1e-9)))
    lines += ["", "| device | model | score time chunked / naive | update time chunked / naive | "
              "score peak chunked / naive | update peak chunked / naive |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for device, name, st, ut, sm, um in ratios:
        lines.append(f"| {device} | {name} | {st:.2f}x | {ut:.2f}x | {sm:.2f}x | {um:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if not quick:
        out = ROOT / "results" / "hf_policy.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text("# hf_policy\n\n" + table + "\n")
    return table


if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "--memory":
        _measure_memory(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], "--quick" in sys.argv)
    else:
        main(quick="--quick" in sys.argv)
