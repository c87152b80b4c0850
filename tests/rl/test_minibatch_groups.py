"""Minibatches do not change what a loss computes for a response (issue 13 item 6).

``policy_optimization`` shuffles the responses of a rollout and splits them into ``minibatches``;
a group (the G responses of one prompt) is then split across minibatches. Group-level quantities
-- HPT's per-prompt SFT/RL switch, GRAO's group statistics with the reference answer, COPO's global
advantage and blend weight, GTPO's conflict runs -- must not be recomputed on the partial group.
The loop runs each loss's ``batch_inputs`` hook once on the full batch; these tests check, for
every loss the loop can run, that each response's per-token loss in a minibatch equals its
per-token loss in the full batch.
"""
from __future__ import annotations

import pytest
import torch

from lab.experiments.policy import _subset, compatible
from lab.models.policy import TabularPolicy
from lab.registry import get
from lab.rl.core import batch_hook, call_with, make_fn
from lab.rl.rollout import pad_responses, rollout
from toy_envs.token_tasks import make_task

# Losses whose statistics are, by the paper's or verl's definition, those of the tensors one call
# sees (a micro-batch), documented in their module docstrings: STEER's Ω_min/Ω_max, HAPO's h̃ fit.
PER_CALL = {"steer": "micro-batch", "hapo": "minibatch"}
N_PROMPTS, G = 4, 8


def _batch(seed: int = 0) -> dict:
    """A loop-like batch: a partial-credit task, 4 prompts × 8 responses, GRPO advantages,
    demonstrations, log-probs of a slightly moved policy (ratios ≠ 1)."""
    g = torch.Generator().manual_seed(seed)
    task = make_task("reverse", difficulty=2, alphabet=3, partial_credit=True)
    policy = TabularPolicy.for_task(task, init_std=1.0, generator=g)
    ro = rollout(policy, task, N_PROMPTS, G, generator=g)
    batch = ro.batch()
    with torch.no_grad():
        policy.logits.add_(0.3 * torch.randn(policy.logits.shape, generator=g))
    scored = policy.score(ro.prompts, ro.tokens, 1.0)
    advantages, _ = get("advantage", "grpo")(ro.rewards, group_size=G)
    demo_tokens, demo_mask = pad_responses(task.targets(ro.prompts[::G]), task.pad_id)
    demo = policy.score(ro.prompts[::G], demo_tokens, 1.0)
    batch.update(advantages=advantages, logprobs=scored.logprobs.detach(), entropy=scored.entropy.detach(),
                 ref_logprobs=ro.logprobs, step=1, total_steps=10, return_per_token=True)
    return batch, demo.logprobs.detach(), demo_mask


def _per_token(loss_fn, batch, demo_logprobs, demo_mask, rows=None):
    mb = batch if rows is None else _subset(batch, rows, batch["rewards"].shape[0])
    groups = torch.unique(mb["group_ids"])                    # the loop's demonstration rows
    mb = {**mb, "demo_logprobs": demo_logprobs[groups], "demo_mask": demo_mask[groups]}
    _, metrics = call_with(loss_fn, mb)
    return metrics["per_token_loss"]


LOSSES = [name for name in compatible("policy_loss") if name not in PER_CALL]
# GTPO's default (the code's) entropy filter drops every answer of this near-uniform policy; the
# paper's rule (an initial entropy above the threshold) keeps them, so its conflicts matter
SPECS = {"gtpo": "gtpo(initial_entropy=3.0)"}


@pytest.mark.parametrize("name", LOSSES)
def test_each_response_trains_the_same_in_any_minibatch(name):
    batch, demo_lp, demo_mask = _batch()
    loss_fn = make_fn("policy_loss", SPECS.get(name, name))
    hook = batch_hook(loss_fn)
    if hook is not None:
        batch = {**batch, **call_with(hook, batch)}
    full = _per_token(loss_fn, batch, demo_lp, demo_mask)
    B = batch["rewards"].shape[0]
    order = torch.randperm(B, generator=torch.Generator().manual_seed(1))
    for rows in order.chunk(4):                                # 8 responses: groups are split
        part = _per_token(loss_fn, batch, demo_lp, demo_mask, rows)
        torch.testing.assert_close(part, full[rows], atol=1e-6, rtol=1e-5,
                                   msg=lambda m: f"{name}: a minibatch changed a response's loss: {m}")


@pytest.mark.parametrize("name", ["hpt", "grao", "copo", "gtpo"])
def test_without_the_full_batch_hook_a_split_group_trains_differently(name):
    # the control: recomputing on the rows of each minibatch (the old loop) changes some response
    batch, demo_lp, demo_mask = _batch()
    loss_fn = make_fn("policy_loss", SPECS.get(name, name))
    full = _per_token(loss_fn, {**batch, **call_with(batch_hook(loss_fn), batch)}, demo_lp, demo_mask)
    B = batch["rewards"].shape[0]
    order = torch.randperm(B, generator=torch.Generator().manual_seed(1))
    differs = False
    for rows in order.chunk(4):
        part = _per_token(loss_fn, batch, demo_lp, demo_mask, rows)
        differs |= not torch.allclose(part, full[rows], atol=1e-6)
    assert differs


@pytest.mark.parametrize("name", sorted(PER_CALL))
def test_per_call_statistics_are_documented(name):
    import inspect

    doc = inspect.getmodule(get("policy_loss", name)).__doc__
    assert PER_CALL[name] in doc and ("split" in doc or "call" in doc)


def test_the_loop_runs_the_hook_once_on_the_full_batch_and_hands_each_row_its_values():
    # a spy loss: its hook numbers the rows of the full batch; every minibatch must receive the
    # numbers of exactly its own rows (a partition of 0..B-1 over each epoch)
    from lab import registry
    from lab.experiments import run
    from lab.registry import register
    from lab.rl.grpo import grpo_loss

    seen = {"hook": [], "rows": []}

    def spy_hook(rewards):
        seen["hook"].append(rewards.shape[0])
        return {"spy_rows": torch.arange(rewards.shape[0], dtype=torch.float32)}

    @register("policy_loss", "_test_spy", paper="test fixture")
    def spy(logprobs, old_logprobs, advantages, mask, *, spy_rows=None):
        assert spy_rows is not None and spy_rows.shape[0] == logprobs.shape[0]
        seen["rows"].append(spy_rows.long().tolist())
        return grpo_loss(logprobs, old_logprobs, advantages, mask, beta=0.0)

    spy.batch_inputs = spy_hook
    try:
        run("policy_optimization", loss="_test_spy", steps=2, n_prompts=4, group_size=4, epochs=2,
            minibatches=4)
    finally:
        registry._REGISTRY["policy_loss"].pop("_test_spy")
    assert seen["hook"] == [16, 16]                           # once per rollout, on all rows
    assert len(seen["rows"]) == 2 * 2 * 4                     # steps × epochs × minibatches
    for k in range(0, len(seen["rows"]), 4):                  # each epoch covers every row once
        assert sorted(r for mb in seen["rows"][k:k + 4] for r in mb) == list(range(16))
