"""One experiment per pillar on CUDA: step times and peak GPU memory.

Pillars and their experiments: optimizers (``digits_mlp``), RL (``policy_optimization`` with the
tiny transformer, and with a random-init Hugging Face Qwen2 when ``transformers`` is installed),
federated (``federated``), MoE (``moe_transformer``). Each runs its smoke config (the
experiment's ``smoke`` overrides) with ``device="cuda"``, once to warm up and once measured;
the step time is the measured wall time over the History's rows, the peak the growth of
``torch.cuda.max_memory_allocated`` during the measured run.

Without a GPU it prints ``no GPU`` and exits 0. ``--device cpu`` runs the same on the CPU (to
check the script; step times only). An experiment that has no ``device`` setting yet is reported
as such and skipped; a run that fails is reported with its error and makes the exit status 1.
Run: ``python benchmarks/gpu_smoke.py``.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import traceback

import torch

PILLARS = [
    ("optimizers", "digits_mlp", {}),
    ("RL", "policy_optimization", {"model": "transformer", "task": "arithmetic(max_operand=4)"}),
    ("RL (Hugging Face)", "policy_optimization",
     {"model": "hf(arch='qwen2', hidden_size=64, num_hidden_layers=2)", "task": "arithmetic(max_operand=4)"}),
    ("federated", "federated", {}),
    ("MoE", "moe_transformer", {}),
]


def measure(name: str, changes: dict, device: str) -> dict:
    """Run experiment ``name`` (smoke config + ``changes``) on ``device``: seconds per step, peak MiB."""
    from lab import registry
    from lab.experiments import config_of, run

    fields = {f.name for f in dataclasses.fields(config_of(name))}
    if "device" not in fields:
        return {"status": "no device setting yet"}
    settings = {**getattr(registry.get("experiment", name), "smoke", {}), **changes, "device": device}
    run(name, **settings)                                                   # warm-up
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    history = run(name, **settings)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"status": "ok", "steps": max(len(history.rows), 1), "step_ms": 1000 * seconds / max(len(history.rows), 1)}
    if cuda:
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    return out


def main(argv: list[str]) -> int:
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU")
        return 0
    if device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(0)}")
    failed = False
    print(f"| pillar | experiment | steps | ms / step | peak MiB |\n| --- | --- | ---: | ---: | ---: |")
    for pillar, name, changes in PILLARS:
        if "hf(" in str(changes.get("model", "")):
            try:
                import transformers  # noqa: F401
            except ImportError:
                print(f"| {pillar} | {name} | – | transformers not installed | – |")
                continue
        try:
            r = measure(name, changes, device)
        except Exception as exc:                                   # report, keep going, fail at the end
            failed = True
            line = traceback.format_exception_only(type(exc), exc)[-1].strip()
            print(f"| {pillar} | {name} | – | failed: {line} | – |")
            continue
        if r["status"] != "ok":
            print(f"| {pillar} | {name} | – | {r['status']} | – |")
            continue
        peak = f"{r['peak_mib']:.1f}" if "peak_mib" in r else "–"
        print(f"| {pillar} | {name} | {r['steps']} | {r['step_ms']:.1f} | {peak} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
