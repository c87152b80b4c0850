"""Experiments for the methods whose inputs the ``policy_optimization`` loop cannot provide.

- ``segment_advantages`` (SPO, arXiv 2505.23564): Monte Carlo values at cut points need extra
  rollouts *from response prefixes*. For a fixed batch of responses it spends the same budget of
  K completions per response on token-level MC (a state before every token) and on SPO-chain
  segments (a state every ``interval`` uncertain tokens), repeats the estimate with fresh
  completions, and reports the variance of each token's advantage; it also samples an SPO tree
  and counts the generated tokens of tree vs chain.
- ``truncation_window`` (T-PPO / EGAE, arXiv 2506.15050): cuts complete responses at a window of
  w tokens and compares EGAE on the truncated responses (and GAE treating the cut as the end)
  with the full-episode GAE, for every w.
- ``hybrid_post_training`` (HPT, arXiv 2509.04419): needs demonstrations (the task's target
  answers) beside the rollouts; a compact loop of rollout -> Dr. GRPO advantages -> ``hpt`` loss.

PSR/NSR, COPO, GRPO-D, ``spo`` (loss), ``egae`` and ``tppo`` run in ``policy_optimization`` itself
(by name); :func:`pass_at_k` and :func:`distinct_correct` read its last batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lab import progress
from lab.checks import check_int, check_positive
from lab.experiments._base import experiment, resolve_device
from lab.experiments.policy import build_model
from lab.history import History, Runs
from lab.models.policy import Generation, generate
from lab.registry import parse_spec
from lab.rl.core import call_with, make_fn, masked_mean
from lab.rl.egae import extended_gae, outcome_token_rewards
from lab.rl.hpt import hpt
from lab.rl.ppo import gae
from lab.rl.rollout import pad_responses, rollout
from lab.rl.spo import spo_chain, spo_cut_points, spo_tree
from toy_envs.token_tasks import make_task


def _nan_padded(x: torch.Tensor, mask: torch.Tensor) -> list:
    """``x`` with NaN on padding, as nested lists (plots leave NaN cells blank)."""
    return torch.where(mask.bool(), x.float(), torch.full(x.shape, float("nan"), device=x.device)).cpu().tolist()


# ---------------------------------------------------------------------------------------------
# Monte Carlo completions from response prefixes
# ---------------------------------------------------------------------------------------------
class _Prefixed:
    """A policy seen from after a fixed response prefix: next_logits(x, p) = π(x, prefix + p)."""

    def __init__(self, policy: Any, prefix: torch.Tensor):
        self.policy, self.prefix = policy, prefix

    def next_logits(self, prompts: torch.Tensor, suffix: torch.Tensor) -> torch.Tensor:
        return self.policy.next_logits(prompts, torch.cat([self.prefix, suffix], dim=1))


def complete(policy: Any, task: Any, prompts: torch.Tensor, prefix: torch.Tensor, *,
             temperature: float, generator: torch.Generator, repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the rest of each response after ``prefix`` (B, c), ``repeat`` times per row (row i
    -> rows i·repeat .. i·repeat + repeat − 1); ``(rewards (B·repeat,), new tokens (B·repeat,))``.

    A policy with a KV cache (``cached_next_logits``: the tiny transformer) encodes each prompt and
    prefix once and then one new token per step; others recompute the whole prefix every step.
    """
    check_int("repeat", repeat, minimum=1)
    if repeat > 1:
        prompts_rep, prefix_rep = prompts.repeat_interleave(repeat, 0), prefix.repeat_interleave(repeat, 0)
    else:
        prompts_rep, prefix_rep = prompts, prefix
    budget = task.max_new_tokens - prefix.shape[1]
    if budget <= 0:
        return task.reward(prompts_rep, prefix_rep).float(), torch.zeros(prefix_rep.shape[0], device=prefix.device)
    with torch.no_grad():
        if hasattr(policy, "cached_next_logits"):
            gen: Generation = generate(policy, prompts_rep, budget, temperature, generator, eos_id=task.eos_id,
                                       pad_id=task.pad_id,
                                       next_logits=policy.cached_next_logits(prompts, prefix, repeat))
        else:
            gen = generate(_Prefixed(policy, prefix_rep), prompts_rep, budget, temperature, generator,
                           eos_id=task.eos_id, pad_id=task.pad_id)
        rewards = task.reward(prompts_rep, torch.cat([prefix_rep, gen.tokens], dim=1)).float()
    return rewards, gen.mask.sum(-1).float()


def mc_value_pool(policy: Any, task: Any, prompts: torch.Tensor, tokens: torch.Tensor,
                  mask: torch.Tensor, n: int, *, temperature: float, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` completion rewards from every state of every response, ``(pool, cost)``.

    ``pool[i, c + 1, k]`` is the k-th completion reward from the prefix y_{≤c} of row i
    (c = −1 is the prompt); ``cost[i, c + 1]`` the mean generated tokens per completion there.
    Prefixes that already end the response (after ``<eos>``) are not completed (NaN).
    """
    B, T = tokens.shape
    pool = torch.full((B, T + 1, n), float("nan"), device=tokens.device)
    cost = torch.zeros(B, T + 1, device=tokens.device)
    lengths = mask.sum(-1)
    for c in range(-1, T - 1):
        rows = (lengths > c + 1).nonzero().flatten()          # the state after token c is not final
        if rows.numel() == 0:
            continue
        rewards, new = complete(policy, task, prompts[rows], tokens[rows, :c + 1],
                                temperature=temperature, generator=generator, repeat=n)
        pool[rows, c + 1] = rewards.view(-1, n)
        cost[rows, c + 1] = new.view(-1, n).mean(-1)
    return pool, cost


# ---------------------------------------------------------------------------------------------
# SPO: segment vs token-level MC advantages, tree vs chain cost
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentConfig:
    """Config of ``segment_advantages``."""

    task: str = "reverse(difficulty=5)"  # token task spec
    model: str = "transformer"  # "transformer" or "tabular"
    n_prompts: int = 3  # prompts
    group_size: int = 2  # responses per prompt
    rollouts: int = 12  # K: MC completions per response, split evenly over its states
    split_budget: bool = True  # K per response split over its states (SPO's comparison); False: K per state
    intervals: tuple[int, ...] = (1, 2, 3, 6)  # SPO-chain cut intervals (1 = token level)
    prob_threshold: float = 0.9  # ρ: only tokens with π_old < ρ are cut points / carry credit
    repeats: int = 4  # independent re-estimations, for the variance
    branch: tuple[int, ...] = (2, 2, 2)  # SPO-tree branching factors b_1..b_D
    temperature: float = 1.0  # sampling temperature
    seed: int = 0  # seed of model, prompts and sampling
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_segments(history: History):
    from lab.viz.segments import segment_figure

    return segment_figure(history)


def chain_states(cuts: list[list[int]]) -> list[list[int]]:
    """The MC states of each row for SPO-chain: its cut points (−1 = the prompt)."""
    return [sorted(set(row)) for row in cuts]


@experiment("segment_advantages", SegmentConfig, paper="Segment Policy Optimization: Effective "
            "Segment-Level Credit Assignment in RL for Large Language Models", arxiv="2505.23564",
            plot=_plot_segments,
            summary="SPO: variance of MC segment vs token advantages at equal rollouts; tree vs chain cost",
            smoke={"task": "reverse(difficulty=2)", "n_prompts": 1, "rollouts": 2, "intervals": (1, 2),
                   "repeats": 2, "branch": (2, 2)})
def segment_advantages(cfg: SegmentConfig) -> History:
    for name in ("n_prompts", "group_size", "rollouts", "repeats"):
        check_int(name, getattr(cfg, name), minimum=1)
    for k in cfg.intervals:
        check_int("intervals", k, minimum=1)
    dev = resolve_device(cfg.device)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    name, kwargs = parse_spec(cfg.task)
    task = make_task(name, **kwargs)
    _check_branch(cfg.branch, task)
    policy = build_model(cfg.model, task, value_head=False, generator=gen, device=dev).eval()
    ro = rollout(policy, task, cfg.n_prompts, cfg.group_size, temperature=cfg.temperature, generator=gen)
    B = ro.tokens.shape[0]
    # one pool of K·repeats completions per state; each estimator takes its share per repeat
    pool, cost = mc_value_pool(policy, task, ro.prompts, ro.tokens, ro.mask, cfg.rollouts * cfg.repeats,
                               temperature=cfg.temperature, generator=gen)
    pool = pool.view(B, -1, cfg.repeats, cfg.rollouts)                          # (B, T+1, R, K)
    history = History(meta={"algorithm": "spo_chain", "task": cfg.task, "seed": cfg.seed})
    examples = {}
    for k in progress.track(cfg.intervals, desc="intervals"):
        cuts = spo_cut_points(ro.logprobs, ro.mask, prob_threshold=cfg.prob_threshold, interval=k)
        states = chain_states(cuts)
        estimates = []
        for r in range(cfg.repeats):
            cut_values = torch.zeros(ro.tokens.shape, device=dev)
            prompt_values = torch.zeros(B, device=dev)
            for i, row in enumerate(states):
                share = _share(cfg, len(row))                                     # N = K / #states
                for c in row:
                    v = pool[i, c + 1, r, :share].mean()
                    if c < 0:
                        prompt_values[i] = v
                    else:
                        cut_values[i, c] = v
            adv, _ = spo_chain(ro.rewards, old_logprobs=ro.logprobs, mask=ro.mask,
                               cut_values=cut_values, prompt_values=prompt_values,
                               prob_threshold=cfg.prob_threshold, interval=k)
            estimates.append(adv)
        est = torch.stack(estimates)                                            # (R, B, T)
        credited = ro.mask & (ro.logprobs.exp() < cfg.prob_threshold)
        var = est.var(0, unbiased=True) if cfg.repeats > 1 else torch.zeros(ro.tokens.shape, device=dev)
        n_states = sum(len(s) for s in states) / B
        # generated MC tokens: N completions from each state, each of its mean length
        mc_tokens = sum(float(cost[i, c + 1]) * _share(cfg, len(s))
                        for i, s in enumerate(states) for c in s) / B
        history.append(k, adv_var=float(masked_mean(var, credited)), states_per_response=n_states,
                       mc_tokens_per_response=mc_tokens,
                       samples_per_state=(cfg.rollouts / max(n_states, 1.0) if cfg.split_budget
                                          else float(cfg.rollouts)))
        examples[str(k)] = _nan_padded(est[0], ro.mask)
    history.artifacts["advantages"] = examples
    history.artifacts["texts"] = [task.decode(t[m]) for t, m in zip(ro.tokens, ro.mask)]
    history.artifacts["tree"] = tree_cost(policy, task, ro.prompts[:1], cfg.branch,
                                          temperature=cfg.temperature, generator=gen)
    history.artifacts["chain_response_tokens"] = float(ro.mask.sum(-1).float().mean())
    return history


def _share(cfg: "SegmentConfig", n_states: int) -> int:
    """MC completions per state: K split over the row's states, or K each (``split_budget=False``)."""
    return max(1, cfg.rollouts // max(n_states, 1)) if cfg.split_budget else cfg.rollouts


def _check_branch(branch: tuple[int, ...], task: Any) -> None:
    """An SPO tree has one segment per factor, each >= 1 token: 1 <= len(branch) <= T, factors >= 1."""
    if len(branch) == 0 or len(branch) > task.max_new_tokens:
        raise ValueError(f"branch must have between 1 and the task's response length "
                         f"({task.max_new_tokens}) factors (one per segment), got {tuple(branch)}")
    for b in branch:
        check_int("branch", b, minimum=1)


def sample_tree(policy: Any, task: Any, prompt: torch.Tensor, branch: tuple[int, ...], *,
                temperature: float, generator: torch.Generator) -> dict[str, Any]:
    """Sample an SPO tree for one prompt (1, P): depth D = len(branch), segments of
    M = ceil(T / D) tokens; returns leaves' tokens, mask, node ids, segment ids, rewards and the
    number of generated tokens."""
    _check_branch(branch, task)
    depth = len(branch)
    seg_len = math.ceil(task.max_new_tokens / depth)
    dev = prompt.device
    tokens = torch.zeros(1, 0, dtype=torch.long, device=dev)
    mask = torch.zeros(1, 0, dtype=torch.bool, device=dev)
    node_ids = torch.zeros(1, 0, dtype=torch.long, device=dev)
    generated = 0
    for d, b in enumerate(branch):
        rep = torch.arange(tokens.shape[0], device=dev).repeat_interleave(b)
        tokens, mask, node_ids = tokens[rep], mask[rep], node_ids[rep]
        budget = min(seg_len, task.max_new_tokens - tokens.shape[1])
        alive = ~(tokens == task.eos_id).any(-1)                               # not ended yet
        with torch.no_grad():
            seg = generate(_Prefixed(policy, tokens), prompt.expand(tokens.shape[0], -1), budget,
                           temperature, generator, eos_id=task.eos_id, pad_id=task.pad_id)
        seg_mask = seg.mask & alive[:, None]
        seg_tokens = torch.where(seg_mask, seg.tokens, torch.full_like(seg.tokens, task.pad_id))
        generated += int(seg_mask.sum())
        width = budget
        tokens = torch.cat([tokens, seg_tokens[:, :width]], dim=1)
        mask = torch.cat([mask, seg_mask[:, :width]], dim=1)
        node_ids = torch.cat([node_ids, torch.arange(tokens.shape[0], device=dev)[:, None]], dim=1)
    segment_ids = (torch.arange(tokens.shape[1], device=dev) // seg_len).clamp(max=depth - 1).expand(tokens.shape)
    prompts = prompt.expand(tokens.shape[0], -1)
    rewards = task.reward(prompts, tokens).float()
    return {"tokens": tokens, "mask": mask, "node_ids": node_ids, "segment_ids": segment_ids,
            "rewards": rewards, "generated": generated, "seg_len": seg_len}


def tree_cost(policy: Any, task: Any, prompt: torch.Tensor, branch: tuple[int, ...], *,
              temperature: float, generator: torch.Generator) -> dict[str, Any]:
    """Tokens an SPO tree generates per leaf, and its segment advantages (JSON-able)."""
    tree = sample_tree(policy, task, prompt, branch, temperature=temperature, generator=generator)
    adv, _ = spo_tree(tree["rewards"], node_ids=tree["node_ids"], segment_ids=tree["segment_ids"],
                      mask=tree["mask"], group_size=tree["tokens"].shape[0])
    leaves = tree["tokens"].shape[0]
    return {"leaves": leaves, "tokens_per_leaf": tree["generated"] / leaves, "seg_len": tree["seg_len"],
            "advantages": _nan_padded(adv, tree["mask"])}


# ---------------------------------------------------------------------------------------------
# EGAE: truncated responses vs the full episode
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TruncationConfig:
    """Config of ``truncation_window``."""

    task: str = "reverse(difficulty=5)"  # token task spec
    model: str = "transformer"  # "transformer" or "tabular"
    n_prompts: int = 6  # prompts
    group_size: int = 2  # responses per prompt
    value_rollouts: int = 6  # MC completions per state: the critic V(s_t) used by every estimator
    gamma: float = 1.0  # γ
    lam: float = 0.95  # λ
    temperature: float = 1.0  # sampling temperature
    seed: int = 0  # seed
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_truncation(history: History):
    from lab.viz.segments import truncation_figure

    return truncation_figure(history)


@experiment("truncation_window", TruncationConfig, paper="Truncated Proximal Policy Optimization",
            arxiv="2506.15050", plot=_plot_truncation,
            summary="EGAE on responses cut at a window w vs full-episode GAE, for every w",
            smoke={"task": "reverse(difficulty=2)", "n_prompts": 2, "value_rollouts": 2})
def truncation_window(cfg: TruncationConfig) -> History:
    check_int("value_rollouts", cfg.value_rollouts, minimum=1)
    dev = resolve_device(cfg.device)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    name, kwargs = parse_spec(cfg.task)
    task = make_task(name, **kwargs)
    policy = build_model(cfg.model, task, value_head=False, generator=gen, device=dev).eval()
    ro = rollout(policy, task, cfg.n_prompts, cfg.group_size, temperature=cfg.temperature, generator=gen)
    pool, _ = mc_value_pool(policy, task, ro.prompts, ro.tokens, ro.mask, cfg.value_rollouts,
                            temperature=cfg.temperature, generator=gen)
    values = torch.nan_to_num(pool.mean(-1)[:, :-1]) * ro.mask                  # V(s_t) = V(y_{<t})
    full, _ = gae(outcome_token_rewards(ro.rewards, ro.mask), values, ro.mask, gamma=cfg.gamma,
                  lam=cfg.lam, whiten=False)
    history = History(meta={"algorithm": "egae", "task": cfg.task, "seed": cfg.seed})
    lengths = ro.mask.sum(-1)
    examples = {}
    for w in range(1, ro.tokens.shape[1] + 1):
        window = ro.mask & (torch.arange(ro.tokens.shape[1], device=dev) < w)    # tokens generated so far
        finished = lengths <= w
        tok = outcome_token_rewards(ro.rewards, window, finished)
        egae_adv, _ = extended_gae(values, tok, window, is_finished=finished, gamma=cfg.gamma,
                                   lam=cfg.lam)
        naive, _ = extended_gae(values, tok, window, gamma=cfg.gamma, lam=cfg.lam)  # cut = terminal
        history.append(w, egae_error=float(masked_mean((egae_adv - full).abs(), window)),
                       naive_error=float(masked_mean((naive - full).abs(), window)),
                       finished_frac=float(finished.float().mean()))
        examples[str(w)] = _nan_padded(egae_adv, window)[0]
    history.artifacts["full_gae"] = _nan_padded(full, ro.mask)[0]
    history.artifacts["egae_by_window"] = examples
    return history


# ---------------------------------------------------------------------------------------------
# HPT: SFT on demonstrations when the rollouts fail, RL otherwise
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HybridConfig:
    """Config of ``hybrid_post_training``."""

    task: str = "reverse(difficulty=2, alphabet=3, partial_credit=False)"  # token task spec, exact-match reward
    model: str = "tabular"  # "tabular" or "transformer"
    advantage: str = "dr_grpo"  # advantage estimator of the RL part
    gate: int = 0  # γ: SFT on the demonstration when at most γ rollouts are correct (-1 = pure RL)
    sft_coef: float = 1.0  # c_sft
    lr: float = 0.1  # Adam learning rate
    steps: int = 20  # iterations
    n_prompts: int = 8  # prompts per step
    group_size: int = 8  # rollouts per prompt
    temperature: float = 1.0  # sampling temperature
    seed: int = 0  # seed
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_hybrid(history: History):
    from lab.viz.figures import curves

    return curves(history, ["accuracy", "sft_frac"])


@experiment("hybrid_post_training", HybridConfig,
            paper="Towards a Unified View of Large Language Model Post-Training", arxiv="2509.04419",
            plot=_plot_hybrid, summary="HPT: per-prompt switch between SFT on demonstrations and RL",
            smoke={"steps": 2, "n_prompts": 2, "group_size": 2})
def hybrid_post_training(cfg: HybridConfig) -> History:
    check_int("steps", cfg.steps, minimum=1)
    check_positive("lr", cfg.lr)
    dev = resolve_device(cfg.device)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    name, kwargs = parse_spec(cfg.task)
    task = make_task(name, **kwargs)
    model = build_model(cfg.model, task, value_head=False, generator=gen, device=dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    estimator = make_fn("advantage", cfg.advantage)
    history = History(meta={"algorithm": f"hpt(gate={cfg.gate})", "task": cfg.task, "seed": cfg.seed})
    for step in progress.steps(cfg.steps, desc="hpt", history=history):
        model.eval()
        ro = rollout(model, task, cfg.n_prompts, cfg.group_size, temperature=cfg.temperature, generator=gen)
        prompts = ro.prompts[::cfg.group_size]                                  # (N, P) one per group
        demo_tokens, demo_mask = pad_responses(task.targets(prompts), task.pad_id, device=dev)
        advantages, _ = call_with(estimator, {"rewards": ro.rewards, "group_size": cfg.group_size,
                                              "mask": ro.mask})
        model.train()
        scored = model.score(ro.prompts, ro.tokens, cfg.temperature)
        demo = model.score(prompts, demo_tokens, cfg.temperature)
        correct = ro.correct.float().view(-1, cfg.group_size).sum(-1)
        loss, metrics = hpt(scored.logprobs, ro.logprobs, advantages.detach(), ro.mask,
                            group_size=cfg.group_size, correct_counts=correct,
                            demo_logprobs=demo.logprobs, demo_mask=demo_mask, gate=cfg.gate,
                            sft_coef=cfg.sft_coef)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(step, reward=float(ro.rewards.mean()), accuracy=float(ro.correct.float().mean()),
                       entropy=float(masked_mean(ro.entropy, ro.mask)), loss=float(loss.detach()),
                       sft_frac=metrics["hpt/sft_frac"])
    return history


# ---------------------------------------------------------------------------------------------
# Reading a policy_optimization run: pass@k and distinct correct answers
# ---------------------------------------------------------------------------------------------
def pass_at_k(rewards: Any, group_size: int, k: int, threshold: float = 0.5) -> float:
    """Unbiased pass@k (Chen et al., arXiv 2107.03374) averaged over groups of n = group_size:
    1 − C(n − c, k)/C(n, k), c the correct responses of the group."""
    check_int("k", k, minimum=1)
    r = np.asarray(rewards, dtype=float).reshape(-1, group_size)
    if k > group_size:
        raise ValueError(f"k must be <= group_size ({group_size}), got {k}")
    c = (r > threshold).sum(-1)
    return float(np.mean([1.0 - math.comb(group_size - ci, k) / math.comb(group_size, k) for ci in c]))


def distinct_correct(history: History, threshold: float = 0.5) -> int:
    """Number of distinct correct responses in a ``policy_optimization`` run's last batch."""
    batch = history.artifacts["last_batch"]
    return len({t for t, r in zip(batch["texts"], batch["rewards"]) if r > threshold})


def effective_correct(history: History, threshold: float = 0.5) -> float:
    """exp(entropy) of the correct responses' frequencies in the last batch: 1 when every correct
    answer is the same one, k when k answers are equally frequent (0 without a correct answer).
    Unlike a count of distinct answers it sees a policy that still samples a rare answer now and
    then but has concentrated on one."""
    from collections import Counter

    batch = history.artifacts["last_batch"]
    counts = np.array(list(Counter(t for t, r in zip(batch["texts"], batch["rewards"]) if r > threshold)
                           .values()), dtype=float)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


# --------------------------------------------------------------------------------------------
# Comparisons for the GRPO-zoo panels (a PolicyConfig in, Runs out)

def sign_runs(cfg: Any) -> Runs:
    """PSR and NSR (``psr_nsr(mode=...)``) on one ``policy_optimization`` config; each History's
    ``artifacts["distinct_correct"]`` counts the distinct correct answers of its last batch and
    ``artifacts["effective_correct"]`` their effective number (:func:`effective_correct`)."""
    from lab.experiments._base import run

    runs = Runs({mode: run("policy_optimization", cfg, loss=f"psr_nsr(mode='{mode}')")
                 for mode in ("psr", "nsr")})
    for history in runs.values():
        history.artifacts["distinct_correct"] = distinct_correct(history)
        history.artifacts["effective_correct"] = effective_correct(history)
    return runs


def copo_runs(cfg: Any) -> Runs:
    """GRPO and COPO on one ``policy_optimization`` config: ``cfg.loss`` when it is a COPO spec
    (e.g. ``"copo(blend='local')"``), else ``"copo"``."""
    from lab.experiments._base import run

    copo = cfg.loss if str(cfg.loss).startswith("copo") else "copo"
    return Runs({"grpo": run("policy_optimization", cfg, loss="grpo"),
                 "copo": run("policy_optimization", cfg, loss=copo)})


GRPO_D = "grpo_d(beta_min=0.0, beta_max=0.2)"
"""The GRPO-D spec of :func:`grpo_d_run` unless the config names another one."""


def grpo_d_run(cfg: Any) -> History:
    """GRPO-D on one ``policy_optimization`` config: ``cfg.loss`` when it is a GRPO-D spec, else
    β rising from 0 to 0.2 (:data:`GRPO_D`)."""
    from lab.experiments._base import run

    return run("policy_optimization", cfg, loss=cfg.loss if str(cfg.loss).startswith("grpo_d") else GRPO_D)


# ---------------------------------------------------------------------------------------------
# The lesson's claims (notebook 07, panel d): one per view, checked by ``pytest -m claims``
# ---------------------------------------------------------------------------------------------
SIGN_BANDIT = "token_bandit(probs=(1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0))"
"""Three correct arms of eight: room for PSR to collapse and NSR to keep all three."""
COPO_BANDIT = "token_bandit(probs=(1.0, 0.0))"
"""Two arms, groups of four: many groups are all-correct or all-wrong."""


def _falls(history: History, key: str, start_above: float, end_below: float) -> bool:
    values = history[key]
    return float(values[:3].mean()) > start_above and float(values[-5:].mean()) < end_below


def _beta_dips_then_rises(history: History) -> bool:
    beta = history["grpo_d/beta"]
    low = int(0.3 * len(beta))
    return bool(beta[low] < 0.5 * beta[0] and beta[-1] > 1.5 * beta[0])


def _claims() -> list:
    from lab.claims import Claim
    from lab.experiments.policy import PolicyConfig

    return [
        Claim(notebook="07_group_relative_zoo", panel="spo",
              text="At the same budget of K rollouts per response, coarser SPO segments (one every 6 "
                   "uncertain tokens) estimate advantages with less than half the variance of token-level "
                   "Monte Carlo: fewer states, so more completions per state.",
              experiment="segment_advantages",
              holds=lambda h: float(h["adv_var"][-1]) < 0.5 * float(h["adv_var"][0]),
              control={"split_budget": False},
              control_text="K completions for every state whatever the segment size: the variance no "
                           "longer falls with coarser segments"),
        Claim(notebook="07_group_relative_zoo", panel="egae",
              text="EGAE on responses cut at a window bootstraps the unfinished ones with their last value: "
                   "its error against full-episode GAE is below treating the cut as the end (mean over "
                   "windows), and 0 once the window covers every response.",
              experiment="truncation_window",
              holds=lambda h: (float(h["egae_error"].mean()) < float(h["naive_error"].mean())
                               and float(h["egae_error"][-1]) < 1e-6),
              control={"gamma": 0.0},
              control_text="γ = 0: no bootstrapping at all, both estimators are the one-step reward"),
        Claim(notebook="07_group_relative_zoo", panel="hpt",
              text="HPT trains a prompt by SFT on its demonstration while none of its rollouts is right and "
                   "switches it to RL once the model solves it: the SFT share starts near 1 and falls "
                   "below 0.5 as accuracy rises.",
              experiment="hybrid_post_training",
              holds=lambda h: _falls(h, "sft_frac", 0.75, 0.5),
              control={"gate": -1},
              control_text="gate = −1: pure RL, no prompt is ever trained by SFT"),
        Claim(notebook="07_group_relative_zoo", panel="sign",
              text="With three correct arms, NSR (push the wrong answers down) keeps all three alive "
                   "(entropy log 3, about 3 effective answers), while PSR (push the right ones up) "
                   "concentrates on fewer: its effective number is lower by more than 0.3.",
              experiment=sign_runs, base=PolicyConfig(task=SIGN_BANDIT, lr=0.5, steps=60),
              holds=lambda runs: (runs["nsr"].artifacts["effective_correct"]
                                  > runs["psr"].artifacts["effective_correct"] + 0.3),
              control={"task": "token_bandit(probs=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))"},
              control_text="one correct arm: both end on it, there is no diversity to lose"),
        Claim(notebook="07_group_relative_zoo", panel="copo",
              text="On a two-arm bandit many groups of 4 are all-correct or all-wrong, so GRPO has no signal "
                   "for a large share of the responses; COPO's global, cross-prompt term trains almost all of "
                   "them (its no-signal share is lower by more than 0.1).",
              experiment=copo_runs, base=PolicyConfig(task=COPO_BANDIT, group_size=4, steps=25, loss="copo"),
              holds=lambda runs: (float(runs["copo"]["copo/no_signal_frac"].mean())
                                  < float(runs["grpo"]["adv_zero_frac"].mean()) - 0.1),
              control={"loss": "copo(blend='local')"},
              control_text="blend='local': COPO is GRPO, the same responses go without signal"),
        Claim(notebook="07_group_relative_zoo", panel="grpo_d",
              text="GRPO-D's KL coefficient follows its schedule: from (β_min + β_max)/2 it dips to β_min at "
                   "30% of training, leaving the policy free to move early, then rises to β_max.",
              experiment=grpo_d_run, base=PolicyConfig(steps=30, lr=0.3, loss=GRPO_D),
              holds=_beta_dips_then_rises,
              control={"loss": "grpo_d(beta_min=0.1, beta_max=0.1)"},
              control_text="β_min = β_max: a constant β"),
    ]


CLAIMS = _claims()
"""Notebook 07's claims for the segment, truncation, hybrid and sign views (see :mod:`lab.claims`)."""


__all__ = ["SegmentConfig", "TruncationConfig", "HybridConfig", "segment_advantages",
           "truncation_window", "hybrid_post_training", "mc_value_pool", "complete", "sample_tree",
           "tree_cost", "chain_states", "pass_at_k", "distinct_correct", "effective_correct", "sign_runs",
           "copo_runs", "grpo_d_run", "GRPO_D", "CLAIMS"]
