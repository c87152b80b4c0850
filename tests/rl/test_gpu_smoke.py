"""benchmarks/gpu_smoke.py: one experiment per pillar on CUDA; "no GPU" and exit 0 without one."""
import importlib.util
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_succeeds(capsys):
    assert _script().main([]) == 0
    assert capsys.readouterr().out.strip() == "no GPU"


def test_it_measures_the_rl_pillar_and_skips_experiments_without_a_device_setting():
    gpu_smoke = _script()
    r = gpu_smoke.measure("policy_optimization", {"model": "transformer"}, "cpu")
    assert r["status"] == "ok" and r["steps"] == 3 and r["step_ms"] > 0      # 2 steps + the greedy row
    pillars = {name for _, name, _ in gpu_smoke.PILLARS}
    assert {"policy_optimization", "digits_mlp", "federated", "moe_transformer"} <= pillars
