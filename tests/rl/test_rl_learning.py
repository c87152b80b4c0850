"""Behaviour: the loop learns. GRPO and PPO find the best arm of the token bandit, and both teach the
tiny transformer small-number addition. Slow tests (a few to tens of seconds on one core)."""
import os
import subprocess
import sys

import pytest
import torch

from lab.history import History

import lab.experiments as E
from toy_envs.token_tasks import make_task


@pytest.mark.slow
@pytest.mark.parametrize("advantage,loss", [("grpo", "grpo"), ("gae", "ppo")])
def test_token_bandit_reaches_the_optimal_arm(advantage, loss):
    # 8 arms with success probabilities 0.2 .. 0.8 (gap 0.086 between the two best)
    h = E.run("policy_optimization", task="token_bandit", model="tabular", advantage=advantage, loss=loss,
              steps=100, n_prompts=8, group_size=8, lr=0.1, eval_every=10)
    task = make_task("token_bandit")
    best = task.arm_probs.max().item()
    assert h["greedy_accuracy"][-1] == 1.0                              # argmax = optimal arm
    assert h["accuracy"][-10:].mean() > 0.85                             # sampled π(optimal arm)
    assert h["reward"][-20:].mean() > best - 0.1
    assert h["reward"][-20:].mean() > h["reward"][:5].mean() + 0.15


ARITHMETIC = dict(task="arithmetic(max_operand=4)", model="transformer", lr=0.002, beta=0.1, steps=250,
                  n_prompts=32, group_size=8, epochs=2, minibatches=2, eval_prompts=400)


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    # seeds 0 and 1 end at 0.96 and 0.93 greedy accuracy with one thread, 0.95 and 0.97 with two.
    # These runs are chaotic: any change of float rounding moves a seed's result by several points,
    # so each test uses the seed whose result held best on both float paths
    dict(advantage="grpo", loss="grpo", seed=0),
    # GAE with λ = 1 (Monte Carlo return minus the critic) and a value head trained with c_v = 0.5;
    # seeds 1, 2, 3 end at 1.0, 0.95, 0.93 with one thread (seeds 1, 2: 0.90, 1.0 with two).
    # β = 0.1 is a k3 loss term: with k1 (zero expected gradient) the policy collapsed onto
    # wrong digits within 50 steps and stayed near 0.2
    dict(advantage="gae(lam=1.0)", loss="ppo(vf_coef=0.5)", seed=2),
], ids=["grpo", "ppo"])
def test_the_tiny_transformer_learns_small_addition(tmp_path, method):
    # A fixed, deterministic run. β = 0.1 towards the near-uniform initial policy keeps exploring;
    # two epochs of two minibatches reuse each rollout. It runs through the command line in a fresh
    # process with one thread, so its floating-point path is the same wherever the suite runs it:
    # the thread count alone changes the reduction order (step-0 losses differ by ~1e-9), and GRPO
    # seed 1 then ends at 0.97 with two threads but 0.93 with one.
    out = tmp_path / "run.json"
    args = [a for k, v in {**ARITHMETIC, **method}.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lab", "run", "policy_optimization", *args,
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    h = History.from_json(out)
    assert h["greedy_accuracy"][-1] >= 0.9
    assert h["accuracy"][:5].mean() < 0.1                               # it did start from scratch
    assert torch.isfinite(torch.tensor(h["loss"])).all()


HF_LLAMA = "hf(arch='llama', hidden_size=64, num_hidden_layers=2, num_attention_heads=4)"
"""A random-init Llama (RoPE, RMSNorm, SwiGLU) of the tiny transformer's size: 100k parameters
against 102k (width 64, two layers, intermediate ⌊8·64/3⌋ = 170, untied head)."""


@pytest.mark.slow
def test_a_hugging_face_llama_learns_small_addition_with_the_same_budget(tmp_path):
    # The GRPO run above, token for token, with model="hf(arch='llama', ...)" instead of the lab's
    # transformer: same seed (0), steps, prompts, group size, epochs, minibatches, lr and β. Seed 0
    # reached 0.905 greedy accuracy with one thread (the tiny transformer: 1.0); one run, so the same
    # chaos caveat applies. In wall time the run costs 1.0-1.2x the tiny transformer's (README).
    out = tmp_path / "run.json"
    settings = {**ARITHMETIC, "model": HF_LLAMA, "advantage": "grpo", "loss": "grpo", "seed": 0}
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lab", "run", "policy_optimization", *args, "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    h = History.from_json(out)
    assert h["greedy_accuracy"][-1] >= 0.9
    assert h["accuracy"][:5].mean() < 0.1                               # it did start from scratch
    assert torch.isfinite(torch.tensor(h["loss"])).all()


@pytest.mark.slow
def test_a_step_of_the_hf_llama_costs_about_a_step_of_the_tiny_transformer():
    # the budget claim, measured cheaply: CPU seconds per step of the addition run (one thread, a
    # fresh process, tiny and Llama interleaved twice, medians); the Llama must stay within 1.5x
    script = f"""
import time, statistics, torch
torch.set_num_threads(1)
import lab.experiments as E
cfg = {dict(ARITHMETIC, steps=2, eval_prompts=8)!r}
times = {{"transformer": [], "hf": []}}
for _ in range(3):
    for key, model in (("transformer", "transformer"), ("hf", {HF_LLAMA!r})):
        t = time.process_time()
        E.run("policy_optimization", **{{**cfg, "model": model}})
        times[key].append(time.process_time() - t)
print(statistics.median(times["hf"][1:]) / statistics.median(times["transformer"][1:]))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ratio = float(proc.stdout.strip().splitlines()[-1])
    assert ratio < 1.5, ratio
