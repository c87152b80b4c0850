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
