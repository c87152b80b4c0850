"""The ``memory_efficient`` experiment and its figures."""
import pytest

from lab.experiments import run
from lab.experiments.memory_efficient import MemoryConfig, compare, memory_efficient
from lab.viz.memory import memory_dashboard

FAST = MemoryConfig(steps=12, hidden=(32, 32), update_proj_gap=5, switch_block_every=4)


def test_compare_reports_loss_energy_and_memory_for_every_method():
    runs = compare(FAST)
    assert list(runs) == ["adamw", "galore", "fira", "frugal", "badam", "gradnorm_lorp"]
    mem = {k: h.artifacts["memory"]["bytes_per_param"] for k, h in runs.items()}
    assert mem["adamw"] == pytest.approx(8.0, abs=0.05)
    assert all(mem[k] < mem["adamw"] for k in mem if k != "adamw")
    assert all((runs["adamw"]["energy"] == 1.0).tolist())
    assert all(0.0 <= e <= 1.0 + 1e-9 for h in runs.values() for e in h["energy"])
    figs = memory_dashboard(runs)
    assert len(figs) == 3 and len(figs[1].data[0].x) == 6


def test_rank_controls_memory_and_captured_energy():
    low = memory_efficient(MemoryConfig(**{**FAST.__dict__, "rank": 2}))
    high = memory_efficient(MemoryConfig(**{**FAST.__dict__, "rank": 32}))
    assert low.artifacts["memory"]["state_bytes"] < high.artifacts["memory"]["state_bytes"]
    assert low["energy"].mean() < high["energy"].mean()
    assert high["energy"].min() > 0.999  # rank 32 covers every 32-wide hidden weight


def test_registered_experiment_runs_with_a_spec_and_rejects_bad_density():
    h = run("memory_efficient", FAST, optimizer="frugal(projection='blockwise')")
    assert h.meta["algorithm"] == "frugal(projection='blockwise')" and "test_accuracy" in h
    with pytest.raises(ValueError, match="density"):
        run("memory_efficient", FAST, density=1.5)
