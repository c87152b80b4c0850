"""Curricula: which prompts a GRPO step trains on, and a value model that steers a frozen policy.

Two experiments behind ``notebooks/11_curricula.ipynb``:

``curriculum`` — GRPO on a *mixture* of data sources (arithmetic of several difficulties), with
the prompts of each step chosen by a sampler (registry kind ``sampler``) or uniformly. The default
mixture: small sums (easy, partial credit), sums up to 18 (harder, partial credit) and the same
hard problems under a strict exact-match verifier (from a random policy almost every group is
all-wrong: zero advantage, a source uniform sampling keeps paying for)::

    pool        pool_size prompts from each source j (a fixed data set; VADE keeps one
                posterior per pool prompt); every source shares one vocabulary and prompt length
    choose      uniform            n prompts uniformly from the pool
                dump               the source of each prompt ~ softmax(UCB(mean |A|)), prompt uniform in it
                vade               the n prompts with the largest Thompson-sampled p̃(1 − p̃)
                difficulty_filter  roll out extra prompts, keep the groups with T_low ≤ p̂ ≤ T_high,
                                   refill for up to ``max_rounds`` rounds (the extra rollouts are counted)
    rollout     G responses per prompt from the current policy, scored by the prompt's source
    update      A = estimator(batch); loss = policy_loss(batch); one Adam step (on-policy GRPO)
    feedback    the sampler sees what happened (|A| per source, successes per prompt, keep rate)
    log         reward, accuracy, frac_zero_std_groups (groups with no signal), weights (share of
                trained groups per source), greedy accuracy per source on the pool, rollouts spent

The estimator and loss are looked up by registry spec and called through
:func:`lab.rl.core.call_with`, exactly as ``policy_optimization`` does; only the choice of prompts
is new, so this loop calls the shared pieces (``rollout``, ``build_model``, ``call_with``)
rather than ``policy_optimization`` itself, which samples its prompts inside. :func:`compare_curricula`
runs a sampler and uniform sampling on the same seed.

``value_augmented_sampling`` — VAS: a frozen policy π_0 (a random tabular policy), a small value
model fitted on π_0's samples, then π_0 decoded with value-guided logits for several β; the
reward rises with β while π_0's weights stay bit-for-bit the same.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from lab import progress
from lab.checks import check_int, check_positive
from lab.experiments._base import experiment, resolve_device
from lab.experiments.policy import build_model
from lab.history import History, Runs
from lab.registry import make, parse_spec
from lab.rl.core import call_with, make_fn
from lab.rl.rollout import Rollout, rollout
from toy_envs.token_tasks import make_task

DUMP_PAPER = "DUMP: Automated Distribution-Level Curriculum Learning for RL-based LLM Post-training"
SAMPLERS = ("uniform", "dump", "vade", "difficulty_filter")


@dataclass(frozen=True)
class CurriculumConfig:
    """Config of ``curriculum``."""

    sampler: str = "dump"  # "uniform" or a sampler spec: "dump", "vade", "difficulty_filter(low=0.1)"
    sources: tuple[str, ...] = ("arithmetic(max_operand=2)", "arithmetic(max_operand=9)",
                                "arithmetic(max_operand=9, partial_credit=False)")  # task specs (same vocab, prompt length)
    pool_size: int = 16  # prompts drawn once from each source (the data set)
    model: str = "tabular"  # "tabular" or "transformer"
    advantage: str = "grpo"  # advantage estimator spec
    loss: str = "grpo(beta=0.0)"  # policy loss spec
    lr: float = 0.1  # Adam learning rate
    steps: int = 30  # training steps
    n_prompts: int = 8  # groups per update
    group_size: int = 8  # G responses per prompt
    max_rounds: int = 3  # difficulty_filter: rollout rounds to refill the batch
    temperature: float = 1.0  # sampling temperature
    seed: int = 0  # seed of the pool, sampling and initialization
    device: str = "auto"  # "auto" = CUDA when available, else CPU (the samplers' bookkeeping stays on the CPU)


def _plot(history: History):
    from lab.viz.curricula import curriculum_figure

    return curriculum_figure(history)


def load_sources(specs: tuple[str, ...]) -> list[Any]:
    """Build the source tasks; they must share the vocabulary and the prompt length."""
    if not specs:
        raise ValueError("sources must name at least one task")
    tasks = []
    for spec in specs:
        name, kwargs = parse_spec(spec)
        tasks.append(make_task(name, **kwargs))
    for spec, task in zip(specs, tasks):
        if task.vocab != tasks[0].vocab or task.prompt_len != tasks[0].prompt_len:
            raise ValueError(f"sources must share one vocabulary and prompt length; {spec!r} differs "
                             f"from {specs[0]!r}")
    return tasks


def mixture_rollout(model: Any, tasks: list[Any], pool: torch.Tensor, pool_source: torch.Tensor,
                    ids: torch.Tensor, group_size: int, *, temperature: float,
                    generator: torch.Generator) -> tuple[Rollout, torch.Tensor]:
    """Roll out pool prompts ``ids`` (each scored by its own source); returns the Rollout (groups
    contiguous, ordered by source) and the pool id of each group in that order."""
    width = max(t.max_new_tokens for t in tasks)
    parts, order = [], []
    for j, task in enumerate(tasks):
        chosen = ids[pool_source[ids] == j]
        if chosen.numel():
            parts.append(rollout(model, task, 0, group_size, temperature=temperature,
                                 generator=generator, max_new_tokens=width, prompts=pool[chosen]))
            order.append(chosen)
    return concat_rollouts(parts), torch.cat(order)


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """One Rollout from several with the same group size (padded to the widest; groups renumbered)."""
    width = max(p.tokens.shape[1] for p in parts)

    def pad(x: torch.Tensor, value: Any) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    group_ids, offset = [], 0
    for p in parts:
        group_ids.append(p.group_ids + offset)
        offset += int(p.group_ids.max()) + 1
    return Rollout(prompts=torch.cat([p.prompts for p in parts]),
                   tokens=torch.cat([pad(p.tokens, 0) for p in parts]),
                   mask=torch.cat([pad(p.mask, False) for p in parts]),
                   logprobs=torch.cat([pad(p.logprobs, 0.0) for p in parts]),
                   entropy=torch.cat([pad(p.entropy, 0.0) for p in parts]),
                   rewards=torch.cat([p.rewards for p in parts]),
                   correct=torch.cat([p.correct for p in parts]),
                   group_ids=torch.cat(group_ids), group_size=parts[0].group_size)


def take_groups(ro: Rollout, groups: torch.Tensor) -> Rollout:
    """The rows of the given groups (in that order), renumbered 0..len(groups)−1."""
    G = ro.group_size
    dev = ro.rewards.device
    rows = (groups[:, None] * G + torch.arange(G, device=dev)).reshape(-1)
    return Rollout(ro.prompts[rows], ro.tokens[rows], ro.mask[rows], ro.logprobs[rows], ro.entropy[rows],
                   ro.rewards[rows], ro.correct[rows], torch.arange(len(groups), device=dev).repeat_interleave(G), G)


@torch.no_grad()
def pool_accuracy(model: Any, tasks: list[Any], pool: torch.Tensor, pool_source: torch.Tensor,
                  generator: torch.Generator) -> list[float]:
    """Greedy exact-match accuracy on each source's pool prompts."""
    model.eval()
    width = max(t.max_new_tokens for t in tasks)
    out = []
    for j, task in enumerate(tasks):
        prompts = pool[pool_source == j]
        gen = model.generate(prompts, width, 0.0, generator, eos_id=task.eos_id, pad_id=task.pad_id)
        out.append(float(task.correct(prompts, gen.tokens).float().mean()))
    return out


def grpo_update(model: Any, optimizer: Any, estimator: Any, loss_fn: Any, ro: Rollout, *, step: int,
                total_steps: int, temperature: float, max_grad_norm: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One on-policy update on a rollout: A = estimator(batch), loss = loss_fn(batch), one step.

    Both are called through :func:`lab.rl.core.call_with` with the Part F.1 batch, as in
    ``policy_optimization``. Returns ``(advantages, loss)``.
    """
    batch = {**ro.batch(), "logprobs": ro.logprobs, "step": step, "total_steps": total_steps}
    advantages, _ = call_with(estimator, batch)
    batch["advantages"] = advantages.detach()
    model.train()
    scored = model.score(ro.prompts, ro.tokens, temperature)                       # ℓ with grad
    batch.update(logprobs=scored.logprobs, entropy=scored.entropy)
    loss, _ = call_with(loss_fn, batch)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return advantages.detach(), loss.detach()


def _group_sums(ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """(successes, failures) per group: Σ R and Σ (1 − R)."""
    r = ro.rewards.view(-1, ro.group_size)
    return r.sum(-1), (1.0 - r).sum(-1)


def _zero_std_frac(ro: Rollout) -> float:
    r = ro.rewards.view(-1, ro.group_size)
    return float((r.max(-1).values == r.min(-1).values).float().mean())


@experiment("curriculum", CurriculumConfig, paper=DUMP_PAPER, arxiv="2504.09710", plot=_plot,
            smoke={"steps": 2, "pool_size": 4, "n_prompts": 4, "group_size": 4, "sampler": "vade"},
            summary="GRPO on a mixture of arithmetic difficulties, prompts chosen by a sampler")
def curriculum(cfg: CurriculumConfig) -> History:
    for name in ("pool_size", "steps", "n_prompts", "group_size", "max_rounds"):
        check_int(name, getattr(cfg, name), minimum=1)
    check_positive("lr", cfg.lr)
    check_positive("temperature", cfg.temperature)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    # the samplers keep their statistics on the CPU and draw from their own CPU generator
    sampler_generator = torch.Generator().manual_seed(cfg.seed + 2)
    tasks = load_sources(cfg.sources)
    J = len(tasks)
    pool = torch.cat([t.sample_prompts(cfg.pool_size, generator) for t in tasks])          # (N, P)
    pool_source = torch.arange(J, device=dev).repeat_interleave(cfg.pool_size)             # (N,)
    N = pool.shape[0]
    if cfg.n_prompts > N:
        raise ValueError(f"n_prompts must be <= the pool size {N}, got {cfg.n_prompts}")
    sampler_name, sampler_kwargs = parse_spec(cfg.sampler)
    if sampler_name not in SAMPLERS:
        raise KeyError(f"unknown curriculum sampler {sampler_name!r}; valid: {', '.join(SAMPLERS)}")
    sampler = None
    if sampler_name == "dump":
        sampler = make("sampler", "dump", J, **sampler_kwargs)
    elif sampler_name == "vade":
        sampler = make("sampler", "vade", N, **sampler_kwargs)
    elif sampler_name == "difficulty_filter":
        sampler = make("sampler", "difficulty_filter", **sampler_kwargs)
    estimator = make_fn("advantage", cfg.advantage)
    loss_fn = make_fn("policy_loss", cfg.loss)
    widest = max(tasks, key=lambda t: t.max_new_tokens)
    model = build_model(cfg.model, widest, value_head=False, generator=generator, device=dev)
    # fused: one pass over the (mostly untouched) tabular logit table per step
    opt = make("optimizer", "adam", model.parameters(), lr=cfg.lr, fused=True)
    history = History(meta={"algorithm": cfg.sampler, "sources": list(cfg.sources), "seed": cfg.seed})
    eval_generator = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    rollouts = 0

    for step in progress.steps(cfg.steps, desc=f"curriculum {cfg.sampler}", history=history):
        model.eval()
        row: dict[str, Any] = {}
        # ---- choose the prompts and roll them out -------------------------------------------
        if sampler_name == "difficulty_filter":
            kept_parts, kept_ids, n_kept = [], [], 0
            for _ in range(cfg.max_rounds):
                n_cand = min(N, sampler.n_candidates(cfg.n_prompts - n_kept))
                cand = torch.randperm(N, generator=generator, device=dev)[:n_cand]
                ro_c, ids_c = mixture_rollout(model, tasks, pool, pool_source, cand, cfg.group_size,
                                              temperature=cfg.temperature, generator=generator)
                rollouts += ro_c.rewards.numel()
                keep, fmetrics = sampler.select(ro_c.rewards, group_size=cfg.group_size)
                sampler.update(len(ids_c), len(keep))
                keep = keep[:cfg.n_prompts - n_kept]
                if len(keep):
                    kept_parts.append(take_groups(ro_c, keep))
                    kept_ids.append(ids_c[keep])
                    n_kept += len(keep)
                if n_kept >= cfg.n_prompts:
                    break
            row["keep_frac"] = fmetrics["difficulty_filter/keep_frac"]
            # nothing passed the filter: no update this step
            ro, ids = (concat_rollouts(kept_parts), torch.cat(kept_ids)) if kept_parts else (None, None)
        else:
            if sampler_name == "uniform":
                ids = torch.randperm(N, generator=generator, device=dev)[:cfg.n_prompts]
            elif sampler_name == "dump":
                sources, dmetrics = sampler.select(cfg.n_prompts, generator=sampler_generator)
                offsets = torch.randint(0, cfg.pool_size, (cfg.n_prompts,), generator=generator, device=dev)
                ids = sources.to(dev) * cfg.pool_size + offsets
                row["dump_weights"] = dmetrics["dump/weights"]
            else:
                ids, _ = sampler.select(cfg.n_prompts, generator=sampler_generator)
                ids = ids.to(dev)
            ro, ids = mixture_rollout(model, tasks, pool, pool_source, ids, cfg.group_size,
                                      temperature=cfg.temperature, generator=generator)
            rollouts += ro.rewards.numel()
        if ro is None:
            history.append(step, rollouts=rollouts, groups=0.0, **row)
        else:
            advantages, loss = grpo_update(model, opt, estimator, loss_fn, ro, step=step,
                                           total_steps=cfg.steps, temperature=cfg.temperature)
            # ---- feedback to the sampler ------------------------------------------------------
            group_source = pool_source[ids]                                                   # (n,)
            if sampler_name == "dump":
                sampler.update(advantages.cpu(), group_source.repeat_interleave(cfg.group_size).cpu(),
                               ro.mask.cpu())
            elif sampler_name == "vade":
                unique, inverse = torch.unique(ids.cpu(), return_inverse=True)
                succ, fail = (x.cpu() for x in _group_sums(ro))
                sampler.update(unique, torch.zeros(len(unique), dtype=succ.dtype, device="cpu").index_add_(
                    0, inverse, succ), torch.zeros(len(unique), dtype=fail.dtype, device="cpu").index_add_(
                    0, inverse, fail))
            # ---- log ----------------------------------------------------------------------------
            share = torch.bincount(group_source, minlength=J).float() / len(ids)
            row.update(reward=ro.rewards.mean(), accuracy=ro.correct.float().mean(), loss=float(loss),
                       frac_zero_std_groups=_zero_std_frac(ro), weights=share.tolist(), rollouts=rollouts,
                       groups=float(len(ids)))
            history.append(step, **row)
        if step % 5 == 4 or step == cfg.steps - 1:
            per_source = pool_accuracy(model, tasks, pool, pool_source, eval_generator)
            history.append(step, source_accuracy=per_source, eval_accuracy=float(np.mean(per_source)))
    if sampler is not None:
        history.artifacts["sampler_state"] = sampler.state_dict()
    return history


def compare_curricula(cfg: CurriculumConfig, baseline: str = "uniform") -> Runs:
    """``cfg``'s sampler and ``baseline`` on the same sources, seed and budget: labelled Runs."""
    from lab.experiments._base import run

    labels = [cfg.sampler] if cfg.sampler == baseline else [cfg.sampler, baseline]
    return Runs({label: run("curriculum", replace(cfg, sampler=label)) for label in labels})


# ---------------------------------------------------------------------------------------------
# VAS: value-guided decoding of a frozen policy
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VASConfig:
    """Config of ``value_augmented_sampling``."""

    task: str = "arithmetic(max_operand=2)"  # token task spec
    init_std: float = 1.0  # spread of the frozen tabular policy's random logits
    steps: int = 40  # value-model regression steps on π_0's samples
    n_prompts: int = 16  # prompts per value-training batch
    group_size: int = 4  # responses per prompt
    value_model: str = "tabular"  # "tabular" (Q[c(x), t, token]) or "transformer" (tiny LM + value head)
    value_lr: float = 0.05  # Adam learning rate of the value model
    d_model: int = 32  # transformer value model width
    k: int = 20  # top-k candidates re-scored by the value model
    betas: tuple[float, ...] = (0.0, 2.0, 8.0)  # guidance strengths β evaluated after training
    eval_prompts: int = 16  # prompts of the evaluation (each sampled group_size times)
    seed: int = 0  # seed of π_0, the value model, sampling
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_vas(history: History):
    from lab.viz.curricula import vas_figure

    return vas_figure(history)


@experiment("value_augmented_sampling", VASConfig,
            paper="Value Augmented Sampling for Language Model Alignment and Personalization",
            arxiv="2405.06639", plot=_plot_vas,
            smoke={"steps": 2, "n_prompts": 4, "group_size": 2, "eval_prompts": 4, "betas": (0.0, 2.0)},
            summary="Fit a small value model on a frozen policy's samples; decode with top-k + beta*V")
def value_augmented_sampling(cfg: VASConfig) -> History:
    from lab.models.policy import TabularPolicy
    from lab.sampling.vas import VAS, TabularValue, TokenValueModel, ValueGuidedPolicy

    for name in ("steps", "n_prompts", "group_size", "eval_prompts", "k", "d_model"):
        check_int(name, getattr(cfg, name), minimum=1)
    check_positive("init_std", cfg.init_std, allow_zero=True)
    if not cfg.betas:
        raise ValueError("betas must hold at least one guidance strength")
    for beta in cfg.betas:
        check_positive("betas", beta, allow_zero=True)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    name, kwargs = parse_spec(cfg.task)
    task = make_task(name, **kwargs)
    base = TabularPolicy.for_task(task, init_std=cfg.init_std, generator=generator, device=dev)   # π_0, frozen
    before = {k: v.clone() for k, v in base.state_dict().items()}
    if cfg.value_model == "tabular":
        value_model = TabularValue.for_task(task, device=dev)
    elif cfg.value_model == "transformer":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            value_model = TokenValueModel.for_task(task, d_model=cfg.d_model, device=dev)
    else:
        raise KeyError(f"unknown value_model {cfg.value_model!r}; valid: tabular, transformer")
    sampler = VAS(value_model, k=cfg.k, beta=cfg.betas[-1], lr=cfg.value_lr)
    history = History(meta={"algorithm": "vas", "task": cfg.task, "seed": cfg.seed})
    for step in progress.steps(cfg.steps, desc="vas value model", history=history):
        ro = rollout(base, task, cfg.n_prompts, cfg.group_size, generator=generator)   # π_0's samples
        history.append(step, reward=ro.rewards.mean(), **sampler.update(ro.prompts, ro.tokens, ro.mask,
                                                                          ro.rewards))
    prompts = task.sample_prompts(cfg.eval_prompts, generator)
    rewards, accuracy = [], []
    for beta in cfg.betas:
        sampler.beta = float(beta)
        eval_generator = torch.Generator(device=dev).manual_seed(cfg.seed + 1)   # same draws for every β
        ro = rollout(ValueGuidedPolicy(base, sampler), task, 0, cfg.group_size, prompts=prompts,
                     generator=eval_generator)
        rewards.append(float(ro.rewards.mean()))
        accuracy.append(float(ro.correct.float().mean()))
    changed = max(float((base.state_dict()[k] - v).abs().max()) for k, v in before.items())
    history.artifacts.update(betas=list(cfg.betas), reward=rewards, accuracy=accuracy,
                             base_weight_change=changed)
    return history


__all__ = ["CurriculumConfig", "SAMPLERS", "VASConfig", "compare_curricula", "concat_rollouts",
           "curriculum", "grpo_update", "load_sources", "mixture_rollout", "pool_accuracy", "take_groups",
           "value_augmented_sampling"]


# ---------------------------------------------------------------------------------------------
# The lesson's claims (notebook 11), checked by tests/test_claims.py
# ---------------------------------------------------------------------------------------------
from lab.claims import Claim  # noqa: E402  (claims sit after the experiments they run)


def _strict_share(runs: Runs) -> float:
    """Share of the last 5 steps' trained groups drawn from the third (strict, all-wrong) source,
    for the sampler's run (the first of :func:`compare_curricula`'s Runs)."""
    history = next(iter(runs.values()))
    return float(history["weights"][-5:, 2].mean())


CLAIMS = [
    Claim(
        notebook="11_curricula", panel="race",
        text="DUMP stops paying for a source whose groups are all wrong: after 20 steps under 15% of "
             "its groups come from the strict exact-match source (uniform sampling: about a third).",
        experiment=compare_curricula, base=CurriculumConfig(sampler="dump", steps=20),
        control={"sampler": "dump(temperature=1000.0)"},
        holds=lambda runs: _strict_share(runs) < 0.15,
        control_text="a softmax temperature of 1000 flattens DUMP's UCB scores: every source is drawn "
                     "equally often again",
    ),
    Claim(
        notebook="11_curricula", panel="vas",
        text="Value guidance improves a frozen policy: at β = 8 the reward is more than twice π₀'s "
             "(β = 0), while π₀'s weights change by exactly 0.",
        experiment="value_augmented_sampling", config={"k": 20},
        control={"k": 1},
        holds=lambda h: h.artifacts["reward"][-1] > 2 * h.artifacts["reward"][0]
        and h.artifacts["base_weight_change"] == 0.0,
        control_text="k = 1: only the most likely token is re-scored, and shifting one logit by "
                     "β(V − mean V) = 0 changes nothing",
    ),
]
