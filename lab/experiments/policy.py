"""Experiment ``policy_optimization``: one RL loop for any (advantage estimator, policy loss) pair.

Each step, read top to bottom::

    rollout     N prompts × G responses from π_old (temperature τ, or a token sampler), rewards R, masks, ℓ^old
    groups      optional: keep the groups group_filter.select(batch) names, refill with fresh prompts  e.g. DAPO
    reference   ℓ^ref from a frozen copy of the initial policy (for β·KL and the ``kl`` curve)
    shaping     optional: R ← shaping(batch)                 e.g. "kl_penalty(beta=0.05)" (KL in reward)
    advantages  A = estimator(batch)                     e.g. "grpo", "rloo", "gae(lam=0.9)"
    selection   optional: mask ← selector.select(batch)  which tokens enter the loss, e.g. "d3s"
    full batch  optional: batch += loss.batch_inputs(batch)  group-level quantities, once (GRAO, HPT, COPO, GTPO)
    update      K epochs × M minibatches: ℓ = score(π_θ); loss = policy_loss(batch) − c_H·mean(H); Adam step
    log         reward, accuracy, entropy, clip_frac, kl, adv_mean, adv_std, response_length, ...

Methods are picked by registry spec strings and called through :func:`lab.rl.core.call_with`, which
hands each one exactly the batch tensors its signature names, so the loop has no per-method
branch. A class registered as an estimator or loss is instantiated once per run (its state
persists across steps). Conventions the loop relies on:

- the batch holds the Part F.1 names: ``rewards``, ``group_size``, ``group_ids``, ``mask``,
  ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``entropy``, ``token_ids``, ``token_rewards``,
  ``lengths``, ``values``/``old_values`` (critic), ``advantages``, ``step``, ``total_steps``, plus
  the config's loss overrides ``clip_eps_low``, ``clip_eps_high``, ``beta`` when set (a spec's own
  arguments win);
- a tensor in an estimator's metrics (GAE's ``returns``) joins the batch; numbers are logged;
- a critic (value head) is built when the estimator asks for ``values`` (GAE);
- the entropy bonus ``entropy_coef`` (PPO paper eq. 9; verl's ``entropy_coeff``) lives in the loop,
  so it applies to every loss alike: ``c_H`` times the token mean of the scored entropies
  (which carry a gradient) is subtracted from each minibatch loss;
- ``reward_shaping`` returns rewards (B,) or per-token rewards (B, T); the batch then holds both
  views, ``rewards = Σ_t token_rewards`` (the task reward is still what ``reward`` logs);
- ``token_selector`` names a registered ``sampler`` whose ``select`` returns a loss mask (B, T) from
  the full batch (after the advantages, which stay as computed); the updates then train on the
  selected tokens only. A selector with a schedule over ``total_steps`` gets the run's ``steps``
  unless its spec sets it;
- ``group_filter`` names a ``sampler`` whose ``select(rewards, group_size=..., group_ids=...)``
  returns the indices of the groups to keep (DAPO's ``dynamic_sampling``: groups with reward
  spread; ``difficulty_filter``); the loop rolls out N fresh prompts per round until N groups are
  kept or the sampler's ``max_rounds`` (default 4) are spent, then fills up with the latest
  rejected groups. ``rollouts`` logs the responses generated per step, ``group_filter/rounds`` and
  ``group_filter/filled_frac`` the rounds and the share filled;
- ``token_sampler`` names a ``sampler`` with ``select(logits, generator=...)`` that picks each rollout
  token from the raw logits (HAPO's per-token temperature); ``ℓ^old`` stays that of π_τ, so the
  first epoch has ratio 1. After each rollout its ``update`` (if any) sees the batch's entropies;
- minibatches are random subsets of the responses, so a group may be split; a loss whose
  quantities belong to a whole group or to the whole batch (GRAO's and HPT's group statistics,
  COPO's global advantage, GTPO's conflict runs) declares ``batch_inputs``
  (:func:`lab.rl.core.batch_hook`): the loop runs it once on the full batch and every minibatch
  row carries its group's values, so the result does not depend on ``minibatches``;
- with ``demonstrations=True`` every minibatch also holds ``demo_logprobs`` / ``demo_mask``: the
  current policy's log-probs (with grad) of the task's reference answer, one row per group present
  in the minibatch in ascending ``group_ids`` order (the order :func:`lab.rl.core.group_index`
  numbers groups in). Losses that imitate demonstrations (``grao``, ``hpt``) use them.

``kl`` in the History is the k3 estimate of KL(π_old ‖ π_ref) on the sampled tokens, whatever the
loss; ``clip_frac`` and ``loss`` are means over the step's minibatch updates.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields as dataclass_fields, replace as dataclass_replace
from typing import Any

import numpy as np
import torch

from lab import progress
from lab.checks import check_int, check_positive
from lab.experiments._base import experiment, resolve_device, run
from lab.history import History, Runs
from lab.registry import available, get, make, parse_spec
from lab.rl.core import batch_hook, call_with, kl, make_fn, masked_mean, wants
from lab.models.policy import frozen_reference
from lab.rl.rollout import pad_responses, rollout, token_rewards
from toy_envs.token_tasks import TokenTask, make_task

MODELS = ("tabular", "transformer", "hf(...)")
LOSS_OVERRIDES = ("clip_eps_low", "clip_eps_high", "beta")
BATCH_KEYS = frozenset({
    "rewards", "group_size", "group_ids", "mask", "logprobs", "old_logprobs", "ref_logprobs", "entropy",
    "token_ids", "token_rewards", "lengths", "values", "old_values", "returns", "advantages", "step",
    "total_steps", "demo_logprobs", "demo_mask", *LOSS_OVERRIDES,
})
"""Names the loop can put in a batch (``values``/``old_values`` with a critic, ``returns`` from GAE)."""


@dataclass(frozen=True)
class PolicyConfig:
    """Config of ``policy_optimization``."""

    task: str = "token_bandit"  # token task spec: "arithmetic(max_operand=4)", "reverse(difficulty=3)", ...
    model: str = "tabular"  # "tabular", "transformer" (tiny causal LM) or a Hugging Face LM "hf(arch='qwen2', ...)"
    advantage: str = "grpo"  # advantage estimator spec, e.g. "rloo", "gae(lam=0.9)"
    loss: str = "grpo"  # policy loss spec, e.g. "ppo", "dapo", "reinforce"
    optimizer: str = "adam"  # optimizer spec
    lr: float = 0.1  # learning rate (a spec's own lr= wins)
    steps: int = 40  # rollout + update iterations
    n_prompts: int = 8  # prompts per rollout
    group_size: int = 8  # G responses per prompt
    epochs: int = 1  # K passes over each rollout
    minibatches: int = 1  # updates per epoch
    temperature: float = 1.0  # sampling temperature τ (also used when scoring)
    clip_eps_low: float | None = None  # override the loss's ε_low (None = its default)
    clip_eps_high: float | None = None  # override the loss's ε_high (None = its default)
    beta: float | None = None  # override the loss's KL weight β (None = its default)
    entropy_coef: float = 0.0  # entropy bonus c_H: each update minimizes loss − c_H · (token mean of H)
    reward_shaping: str | None = None  # a "reward" spec applied before the advantages, e.g. "kl_penalty(beta=0.05)"
    demonstrations: bool = False  # score the task's reference answers (demo_logprobs) for GRAO, HPT
    token_selector: str | None = None  # a "sampler" spec returning a reduced loss mask, e.g. "d3s"
    token_sampler: str | None = None  # a "sampler" spec that picks each rollout token, e.g. "adaptive_temperature"
    group_filter: str | None = None  # a "sampler" spec keeping groups, refilled by new rollouts, e.g. "dynamic_sampling" (DAPO)
    max_grad_norm: float | None = 1.0  # gradient clipping (None = off)
    d_model: int = 64  # transformer width
    n_layers: int = 2  # transformer blocks
    eval_every: int = 0  # log greedy_accuracy every this many steps (0 = only after the last step)
    eval_prompts: int = 64  # prompts in each greedy evaluation
    seed: int = 0  # seed of prompts, sampling and initialization
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot(history: History):
    from lab.viz.rl import training_figure

    return training_figure(history)


def build_model(name: str, task: Any, *, value_head: bool, d_model: int = 64, n_layers: int = 2,
                generator: torch.Generator | None = None, device: Any = None) -> torch.nn.Module:
    """A policy for ``task`` on ``device``, seeded by ``generator``: ``"tabular"``, ``"transformer"``,
    or ``"hf(arch='qwen2', hidden_size=64, ...)"`` / ``"hf(path='/local/dir', lora=8)"``, a Hugging
    Face causal LM (:func:`lab.rl.hf.policy_for_task`)."""
    from lab.models.policy import TabularPolicy
    from lab.models.transformer import TinyTransformer

    kind, kwargs = parse_spec(name)
    if kind == "hf":
        from lab.rl.hf import policy_for_task

        return policy_for_task(task, value_head=value_head, generator=generator, device=device, **kwargs)
    if kind in ("tabular", "transformer") and kwargs:
        raise TypeError(f"model {kind!r} takes no arguments (its size: d_model, n_layers); got {name!r}")
    if kind == "tabular":
        return TabularPolicy.for_task(task, value_head=value_head, device=device)
    if kind == "transformer":
        return TinyTransformer.for_task(task, d_model=d_model, n_layers=n_layers, value_head=value_head,
                                        generator=generator, device=device)
    raise KeyError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")


def compatible(kind: str) -> list[str]:
    """Registered ``advantage`` or ``policy_loss`` names whose required arguments the loop provides."""
    names = []
    for name in available(kind):
        obj = get(kind, name)
        fn = obj.__call__ if inspect.isclass(obj) else obj
        required = {p.name for p in inspect.signature(fn).parameters.values()
                    if p.default is inspect.Parameter.empty and p.name != "self"
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if required <= BATCH_KEYS:
            names.append(name)
    return names


def _subset(batch: dict[str, Any], idx: torch.Tensor, n: int) -> dict[str, Any]:
    """Rows ``idx`` of every per-response tensor; ``group_size`` no longer holds after shuffling."""
    out = {k: (v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v)
           for k, v in batch.items()}
    out["group_size"] = None
    return out


def _make_sampler(spec: str, role: str, needs: str, **defaults: Any) -> Any:
    """The ``sampler`` of ``spec`` (instantiated once) for ``role``; its ``select`` must take
    ``needs``. Each of ``defaults`` its constructor accepts is filled in unless the spec sets it."""
    name, kwargs = parse_spec(spec)
    cls = get("sampler", name)
    takes = list(inspect.signature(cls.select).parameters) if hasattr(cls, "select") else []
    if needs not in takes:
        raise TypeError(f"sampler {name!r} cannot serve as {role}: that needs select({needs}, ...), "
                        f"its select takes ({', '.join(p for p in takes if p != 'self')})")
    accepted = inspect.signature(cls).parameters
    return cls(**{**{k: v for k, v in defaults.items() if k in accepted}, **kwargs})


def _filtered_rollout(sample: Any, group_filter: Any, n_groups: int) -> tuple[Any, dict[str, float]]:
    """Roll out until ``n_groups`` groups pass ``group_filter.select`` (DAPO's dynamic sampling).

    Each round calls ``sample()`` (N fresh prompts × G); the kept groups accumulate, at most
    ``max_rounds`` rounds (the sampler's attribute, default 4). Missing groups are then filled
    with the latest rejected ones. Returns the batch (exactly ``n_groups`` groups, group ids
    0..n-1) and the numbers to log: the sampler's metrics of the last round, ``rollouts``
    (responses generated), ``group_filter/rounds`` and ``group_filter/filled_frac``.
    """
    max_rounds = int(getattr(group_filter, "max_rounds", 4))
    kept, rejected, numbers, n_kept, rounds, generated = [], [], {}, 0, 0, 0
    while rounds < max_rounds and n_kept < n_groups:
        ro = sample()
        rounds += 1
        generated += ro.rewards.shape[0]
        keep, metrics = call_with(group_filter.select, ro.batch())
        numbers = _split_metrics(metrics)[1]
        keep = keep[: n_groups - n_kept]
        n_all = ro.rewards.shape[0] // ro.group_size
        mask = torch.ones(n_all, dtype=torch.bool, device=keep.device)
        mask[keep] = False
        kept.append(_groups(ro, keep))
        rejected.append(_groups(ro, mask.nonzero()[:, 0]))
        n_kept += int(keep.numel())
    filled = n_groups - n_kept
    for part in reversed(rejected):                                   # the latest rejected first
        if n_kept >= n_groups:
            break
        take = min(n_groups - n_kept, part.rewards.shape[0] // part.group_size)
        kept.append(_groups(part, torch.arange(take, device=part.rewards.device)))
        n_kept += take
    numbers.update({"rollouts": float(generated), "group_filter/rounds": float(rounds),
                    "group_filter/filled_frac": filled / n_groups})
    return _concat_rollouts(kept), numbers


def _groups(ro: Any, groups: torch.Tensor) -> Any:
    """The rows of groups ``groups`` (k,) of a rollout, as a rollout of k groups."""
    G = ro.group_size
    rows = (groups[:, None] * G + torch.arange(G, device=groups.device)).flatten()
    return dataclass_replace(ro, **{f.name: getattr(ro, f.name)[rows] for f in dataclass_fields(ro)
                                    if f.name != "group_size"})


def _concat_rollouts(parts: list[Any]) -> Any:
    """One rollout from several with the same group size; group ids renumbered 0..n-1."""
    parts = [p for p in parts if p.rewards.shape[0]]
    out = dataclass_replace(parts[0], **{f.name: torch.cat([getattr(p, f.name) for p in parts])
                                         for f in dataclass_fields(parts[0]) if f.name != "group_size"})
    n = out.rewards.shape[0] // out.group_size
    out.group_ids = torch.arange(n, device=out.group_ids.device).repeat_interleave(out.group_size)
    return out


def _both_reward_views(shaped: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Shaped rewards as both batch entries: (B,) on the last valid token, or (B, T) summed per row."""
    if shaped.dim() == 1:
        return {"rewards": shaped, "token_rewards": token_rewards(shaped, mask)}
    return {"rewards": (shaped * mask).sum(-1), "token_rewards": shaped}


def _split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    numbers = {k: float(v) for k, v in metrics.items() if k not in tensors and isinstance(v, (int, float))}
    return tensors, numbers


@experiment("policy_optimization", PolicyConfig,
            paper="DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
            arxiv="2402.03300", plot=_plot,
            summary="Group rollouts on a token task, any advantage estimator x any policy loss",
            smoke={"steps": 2, "n_prompts": 2, "group_size": 4, "epochs": 2, "minibatches": 2, "eval_prompts": 4})
def policy_optimization(cfg: PolicyConfig) -> History:
    for name in ("steps", "n_prompts", "group_size", "epochs", "minibatches", "eval_prompts"):
        check_int(name, getattr(cfg, name), minimum=1)
    check_positive("lr", cfg.lr)
    check_positive("temperature", cfg.temperature)
    check_positive("entropy_coef", cfg.entropy_coef, allow_zero=True)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    task_name, task_kwargs = parse_spec(cfg.task)
    task = make_task(task_name, **task_kwargs)
    estimator = make_fn("advantage", cfg.advantage)
    loss_fn = make_fn("policy_loss", cfg.loss)
    full_batch_inputs = batch_hook(loss_fn)
    shaping = make_fn("reward", cfg.reward_shaping) if cfg.reward_shaping else None
    selector = (_make_sampler(cfg.token_selector, "token_selector", "mask", total_steps=cfg.steps, eos_id=task.eos_id)
                if cfg.token_selector else None)
    token_sampler = (_make_sampler(cfg.token_sampler, "token_sampler", "logits", temperature=cfg.temperature)
                     if cfg.token_sampler else None)
    group_filter = (_make_sampler(cfg.group_filter, "group_filter", "rewards") if cfg.group_filter else None)
    if cfg.demonstrations and type(task).targets is TokenTask.targets:
        raise ValueError(f"demonstrations=True needs a task with reference answers; {cfg.task!r} has none")
    critic = "values" in wants(estimator)
    model = build_model(cfg.model, task, value_head=critic, d_model=cfg.d_model, n_layers=cfg.n_layers,
                        generator=generator, device=dev)
    if hasattr(model, "task_view"):                     # hf(path=...): the task through the tokenizer
        task = model.task_view(task)
    reference = frozen_reference(model)
    opt_name, opt_kwargs = parse_spec(cfg.optimizer)
    optimizer = make("optimizer", opt_name, model.parameters(), **{"lr": cfg.lr, **opt_kwargs})
    overrides = {k: getattr(cfg, k) for k in LOSS_OVERRIDES if getattr(cfg, k) is not None}
    history = History(meta={"algorithm": f"{cfg.advantage} + {cfg.loss}", "task": cfg.task,
                            "model": cfg.model, "seed": cfg.seed})
    tau = cfg.temperature
    eval_generator = torch.Generator(device=dev).manual_seed(cfg.seed + 1)

    for step in progress.steps(cfg.steps, desc=f"{cfg.advantage}+{cfg.loss}", history=history):
        # ---- rollout: G responses per prompt from the current (old) policy -------------------
        model.eval()
        def sample() -> Any:
            return rollout(model, task, cfg.n_prompts, cfg.group_size, temperature=tau, generator=generator,
                           token_sampler=token_sampler)

        ro, filter_numbers = _filtered_rollout(sample, group_filter, cfg.n_prompts) if group_filter else (
            sample(), {"rollouts": float(cfg.n_prompts * cfg.group_size)})
        B = ro.tokens.shape[0]
        sampler_numbers: dict[str, float] = {}
        if token_sampler is not None and hasattr(token_sampler, "update"):      # fit on this batch
            sampler_numbers = _split_metrics(call_with(token_sampler.update, ro.batch()) or {})[1]
        with torch.no_grad():
            ref_logprobs = reference.score(ro.prompts, ro.tokens, tau).logprobs      # (B, T)
            old_values = model.score(ro.prompts, ro.tokens, tau).values if critic else None
        batch = {**ro.batch(), **overrides, "ref_logprobs": ref_logprobs, "logprobs": ro.logprobs,
                 "values": old_values, "old_values": old_values, "step": step, "total_steps": cfg.steps}
        shaping_numbers: dict[str, float] = {}
        if shaping is not None:
            shaped, shaping_metrics = call_with(shaping, batch)
            batch.update(_both_reward_views(shaped, ro.mask))
            shaping_numbers = _split_metrics(shaping_metrics)[1]
        # ---- advantages ------------------------------------------------------------------------
        advantages, adv_metrics = call_with(estimator, batch)
        extra, adv_numbers = _split_metrics(adv_metrics)
        batch.update(extra, advantages=advantages.detach())
        selector_numbers: dict[str, float] = {}
        if selector is not None:                                                # tokens of the loss
            selected, selector_metrics = call_with(selector.select, batch)
            if not (isinstance(selected, torch.Tensor) and selected.shape == ro.mask.shape):
                raise TypeError(f"token_selector {cfg.token_selector!r} must return a loss mask of shape "
                                f"{tuple(ro.mask.shape)}")
            batch["mask"] = selected.bool() & ro.mask
            selector_numbers = _split_metrics(selector_metrics)[1]
        if full_batch_inputs is not None:            # group-level quantities before the minibatch split
            batch.update(call_with(full_batch_inputs, batch))
        if cfg.demonstrations:                                                  # one answer per group
            group_prompts = ro.prompts[::ro.group_size]
            demo_tokens, demo_mask = pad_responses(task.targets(group_prompts), task.pad_id, device=dev)
        # ---- K epochs of minibatch updates against old_logprobs --------------------------------
        model.train()
        update_metrics: list[dict[str, float]] = []
        grad_norms = []
        for _ in range(cfg.epochs):
            order = torch.randperm(B, generator=generator, device=dev)
            for idx in order.chunk(cfg.minibatches):
                mb = _subset(batch, idx, B)
                scored = model.score(ro.prompts[idx], mb["token_ids"], tau)           # ℓ with grad
                mb.update(logprobs=scored.logprobs, entropy=scored.entropy, values=scored.values)
                if cfg.demonstrations:
                    groups = torch.unique(mb["group_ids"])                            # ascending ids
                    demo = model.score(group_prompts[groups], demo_tokens[groups], tau)
                    mb.update(demo_logprobs=demo.logprobs, demo_mask=demo_mask[groups])
                loss, metrics = call_with(loss_fn, mb)
                if cfg.entropy_coef > 0:                                              # − c_H · mean H
                    loss = loss - cfg.entropy_coef * masked_mean(scored.entropy, mb["mask"])
                optimizer.zero_grad()
                loss.backward()
                limit = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), limit)))
                optimizer.step()
                update_metrics.append(_split_metrics(metrics)[1])
        # ---- log -------------------------------------------------------------------------------
        mask = ro.mask
        row = {"reward": ro.rewards.mean(), "accuracy": ro.correct.float().mean(),
               "entropy": masked_mean(ro.entropy, mask),
               "kl": masked_mean(kl(ro.logprobs, ref_logprobs, "k3"), mask),
               "response_length": ro.lengths.float().mean(), "grad_norm": float(np.mean(grad_norms))}
        # every number the estimator reports (adv_mean, adv_std, frac_*, method-specific keys such
        # as "bnpo/alpha"), then the loss's metrics averaged over the updates ("grpo_d/beta", ...);
        # the rollout-level values above win over a minibatch's
        numbers = {**filter_numbers, **sampler_numbers, **shaping_numbers, **adv_numbers, **selector_numbers}
        row.update({k: v for k, v in numbers.items() if k not in row})
        for key in sorted({k for m in update_metrics for k in m} - set(row)):
            row[key] = float(np.mean([m[key] for m in update_metrics if key in m]))
        row.setdefault("clip_frac", 0.0)
        if cfg.eval_every and step % cfg.eval_every == 0:
            row["greedy_accuracy"] = greedy_accuracy(model, task, cfg.eval_prompts, eval_generator)
        history.append(step, **row)
    history.append(cfg.steps, greedy_accuracy=greedy_accuracy(model, task, cfg.eval_prompts, eval_generator))

    history.artifacts["last_batch"] = _batch_artifact(task, ro, batch["advantages"])
    return history


@dataclass(frozen=True)
class KLPlacementsConfig:
    """Config of :func:`kl_placement_runs` (four ``policy_optimization`` runs)."""

    beta: float = 0.3  # β of the KL term, wherever it goes
    steps: int = 40  # training steps of each run
    lr: float = 0.1  # learning rate
    seed: int = 0  # the same seed for all four runs


def kl_placement_runs(cfg: KLPlacementsConfig) -> Runs:
    """The four KL placements of :func:`kl_placements` for one config (the panel's experiment)."""
    return kl_placements(beta=cfg.beta, steps=cfg.steps, lr=cfg.lr, seed=cfg.seed)


def kl_placements(beta: float = 0.3, **changes: Any) -> Runs:
    """One PPO run on the token bandit with the KL to the reference in four places.

    ``"no KL"`` (β = 0); ``"k1 in the loss"``, ``L + β·mean(ℓ − ℓ^ref)``: its expected gradient is
    zero on-policy (E_π[∇ℓ] = 0), so it behaves like no KL at all; ``"k3 in the loss"`` (GRPO's
    estimator, ``policy_loss/ppo``'s default); ``"k1 in the reward"``, ``r_t − β(ℓ^old − ℓ^ref)``
    (``reward/kl_penalty``, RLHF-PPO). ``changes`` go to every run (e.g. ``steps``, ``seed``); the
    defaults are 40 steps at lr 0.1 with GRPO advantages, about a second per run. Plot the ``kl``
    curves.
    """
    check_positive("beta", beta, allow_zero=True)
    base = {"advantage": "grpo", "steps": 40, "lr": 0.1, **changes}
    variants = {
        "no KL": {"loss": "ppo", "beta": 0.0},
        "k1 in the loss": {"loss": "ppo(kl_estimator='k1')", "beta": beta},
        "k3 in the loss": {"loss": "ppo(kl_estimator='k3')", "beta": beta},
        "k1 in the reward": {"loss": "ppo", "beta": 0.0, "reward_shaping": f"kl_penalty(beta={beta!r})"},
    }
    return Runs({label: run("policy_optimization", **{**base, **v}) for label, v in variants.items()})


@torch.no_grad()
def greedy_accuracy(model: Any, task: Any, n_prompts: int, generator: torch.Generator) -> float:
    """Share of ``n_prompts`` fresh prompts answered exactly with greedy decoding (τ = 0)."""
    model.eval()
    prompts = task.sample_prompts(n_prompts, generator)
    gen = model.generate(prompts, task.max_new_tokens, 0.0, generator, eos_id=task.eos_id, pad_id=task.pad_id)
    return int(task.correct(prompts, gen.tokens).sum()) / n_prompts             # exact, not float32


def _batch_artifact(task: Any, ro: Any, advantages: torch.Tensor) -> dict[str, Any]:
    """The last rollout for plots: per-token advantages (NaN on padding), texts, rewards."""
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand(ro.mask.shape)
    adv = torch.where(ro.mask, adv.float(), torch.full(adv.shape, float("nan"), device=adv.device))
    texts = [f"{task.decode(p)}{task.decode(t[m])}" for p, t, m in zip(ro.prompts, ro.tokens, ro.mask)]
    return {"advantages": adv.tolist(), "texts": texts, "rewards": ro.rewards.tolist(),
            "group_size": ro.group_size}


# ---------------------------------------------------------------------------------------------
# The lesson's claims (notebook 06): one per panel, checked by ``pytest -m claims``
# ---------------------------------------------------------------------------------------------
def _short_tokens_weigh_more(result: dict) -> bool:
    """Per-response mean: a token of the shortest response outweighs one of the longest; the
    token mean weighs all alike."""
    lengths, w = result["lengths"], result["weights"]
    short, long_ = lengths.index(min(lengths)), lengths.index(max(lengths))
    per_seq, tok = w["seq_mean_token_mean"], w["token_mean"]
    return per_seq[short] > 1.5 * per_seq[long_] and max(tok) - min(tok) < 1e-12


def _k1_loss_does_not_hold_k3_does(runs: Runs) -> bool:
    """k1 in the loss ends as far from the reference as no KL; k3 in the loss ends closer, k1 in
    the reward closer still (mean KL over the last 5 steps)."""
    end = {label: float(np.mean(h["kl"][-5:])) for label, h in runs.items()}
    none = end["no KL"]
    return (end["k1 in the loss"] > 0.8 * none and end["k3 in the loss"] < 0.8 * none
            and end["k1 in the reward"] < 0.6 * none)


def _claims() -> list:
    from lab.claims import Claim
    from lab.viz.rl import CalculatorConfig, advantage_calculator

    tight = {"clip_eps_low": 0.05, "clip_eps_high": 0.05}
    return [
        Claim(notebook="06_policy_gradients", panel="calculator",
              text="Averaging per response (seq_mean_token_mean, the GRPO paper's choice) gives each token "
                   "of a short response more weight than a token of a long one; the token mean (DAPO) "
                   "weighs every token alike.",
              experiment=advantage_calculator, base=CalculatorConfig(), seed_field=None,
              holds=_short_tokens_weigh_more, control={"lengths": (6,) * 8},
              control_text="responses of equal length: every mode weighs every token alike"),
        Claim(notebook="06_policy_gradients", panel="training",
              text="With 2 epochs × 2 minibatches per rollout the policy moves between updates, the ratio "
                   "π/π_old leaves 1 and the clip range binds (clip_frac > 0); a tighter ε clips more.",
              experiment="policy_optimization",
              config={"epochs": 2, "minibatches": 2, "clip_eps_low": 0.2, "clip_eps_high": 0.2, "beta": 0.0},
              control={"epochs": 1, "minibatches": 1},
              holds=lambda h: float(np.mean(h["clip_frac"])) > 0.005,
              control_text="one epoch, one minibatch: every update is on-policy, ρ ≡ 1, nothing is clipped"),
        Claim(notebook="06_policy_gradients", panel="training", name="tight_eps",
              text="ε = 0.05 clips several times more tokens than ε = 0.2 at the same epochs and minibatches.",
              experiment="policy_optimization",
              config={"epochs": 2, "minibatches": 2, "beta": 0.0, "steps": 20, **tight},
              control={"clip_eps_low": 0.2, "clip_eps_high": 0.2},
              holds=lambda h: float(np.mean(h["clip_frac"])) > 0.05,
              control_text="ε = 0.2: the ratio rarely leaves [0.8, 1.2] in 4 updates"),
        Claim(notebook="06_policy_gradients", panel="kl",
              text="k1 = log π − log π_ref as a loss term does not hold the policy near the reference (its "
                   "expected gradient is zero on-policy): its KL grows like the run without KL. k3 in the "
                   "loss (GRPO) keeps it smaller, k1 in the reward (RLHF-PPO) about half or less.",
              experiment=kl_placement_runs, base=KLPlacementsConfig(),
              control={"beta": 0.0},
              holds=_k1_loss_does_not_hold_k3_does,
              control_text="β = 0: all four runs are the same run without KL"),
    ]


CLAIMS = _claims()
"""Notebook 06's claims (see :mod:`lab.claims`)."""


__all__ = ["PolicyConfig", "policy_optimization", "build_model", "compatible", "greedy_accuracy", "kl_placements",
           "KLPlacementsConfig", "kl_placement_runs", "MODELS", "CLAIMS"]
