"""Experiments behind ``notebooks/12_multi_objective.ipynb``: several rewards, one policy.

``multi_objective`` — GRPO on a task with K rewards (``toy_envs.multi_objective`` or the JSON-like
``toy_envs.structured``), the K rewards turned into the learning signal by a *method*::

    rollout    G responses per prompt from the current policy            (lab.rl.rollout)
    score      r (B, K) = task.objectives(prompts, responses)
    combine    fixed                  R = Σ w_k r_k                      (linear scalarization)
               multi_label            per-head group normalization, then Σ w_k (reward/multi_label)
               hypervolume_weighting  R = meta · Σ w_k r_k, meta from the HV gain of the last evaluation
               gradient_weighting     w moved by the Gram row sums of per-objective policy gradients
               recap                  λ from each objective's loss 1.1 − mean r_k (default: the lab's level
                                      rule, which favours objectives that stalled while still behind)
               pro                    w(x) from an adapter fitted on preferred responses' scores
               constrained_lagrangian A = mix of per-RM and −KL advantages with multipliers σ(λ)
               structured_output      RL-Struct's gated sum of five verifier scores
    advantage  A = estimator(R) (GRPO by default; the constrained method mixes advantages itself)
    update     one step of the policy loss (GRPO's clipped surrogate), Adam
    evaluate   greedy responses on fixed prompts -> mean objective vector v (K,); the Pareto
               front of all v so far and its hypervolume above ``hv_reference``

The rollout, the model, the estimator and the loss are the shared pieces of
``lab.experiments.policy`` (``build_model``, ``rollout``, ``make_fn``/``call_with``); only the
"score" and "combine" steps are new. The History logs each objective (``obj/<name>``), the
greedy vector (``eval/<name>``), the weights or multipliers (``weights``, ``lambda``), ``hypervolume``,
and on the proxy task the hidden ``true_reward`` next to the proxy ``reward``.

``pareto_sweep`` runs one method for several initial weight vectors and collects the final greedy
points (the method's Pareto front) and its hypervolume, streaming them point by point to a live
panel; ``compare_fronts`` does it per method.
On the default task (correctness (k/L)² against brevity) fixed weights end at the two ends of the
front, RECAP's balancing weights reach points between them (``tests/multi_objective``). The
paper's gradient rule, on this two-objective toy, moves weight to the objective that is already
ahead (its gradient is the larger one), so it ends at an end too.

Choices: the policy is the tabular softmax of ``lab.models.policy``; ``prior`` adds a logit bonus
on a task's template (the JSON-like task: the syntax but not the values), standing in for the
instruction-tuned model RL-Struct starts from; the constrained method's KL advantage is the
group-normalized −Σ_t (ℓ^old − ℓ^ref) of each response.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import torch

from lab import progress
from lab.checks import check_choice, check_int, check_positive
from lab.experiments._base import experiment, resolve_device
from lab.experiments.policy import build_model
from lab.history import History, Runs
from lab.registry import make, parse_spec
from lab.rewards.constrained import ConstrainedLagrangian
from lab.rl.core import call_with, group_normalize, make_fn
from lab.rewards.multi_label import multi_label
from lab.rewards.multi_objective import hypervolume, pareto_front, weighted_sum
from lab.rewards.pro import PreferenceOrchestrator
from lab.rewards.recap import RECAP
from lab.rewards.reward_weighting import GradientWeighting, HypervolumeWeighting
from lab.rl.rollout import rollout
from lab.rewards.structured_output import structured_output

RECAP_OFFSET = 0.1
PAPER = "Learning to Optimize Multi-Objective Alignment Through Dynamic Reward Weighting"
TASKS = {"multi_objective": "toy_envs.multi_objective:MultiObjectiveTask",
         "proxy_reward": "toy_envs.multi_objective:ProxyRewardTask",
         "structured": "toy_envs.structured:StructuredTask"}


@dataclass(frozen=True)
class MultiObjectiveConfig:
    """Config of ``multi_objective``."""

    method: str = "recap"  # fixed, multi_label, hypervolume_weighting, gradient_weighting, recap, pro, constrained_lagrangian, structured_output
    task: str = "multi_objective"  # task spec: "multi_objective(power=2.0)", "proxy_reward", "structured"
    weights: tuple[float, ...] = (0.5, 0.5)  # initial / fixed objective weights w (one per objective)
    advantage: str = "grpo"  # advantage estimator spec for the combined reward
    loss: str = "grpo(beta=0.0)"  # policy loss spec
    lr: float = 0.2  # Adam learning rate of the policy
    steps: int = 40  # rollout + update iterations
    n_prompts: int = 8  # prompts per rollout
    group_size: int = 8  # G responses per prompt
    weight_lr: float = 0.5  # gradient_weighting: η/λ_reg, the step on log w per unit of Gram row sum
    recap_window: int = 3  # recap: W
    recap_temperature: float = 0.2  # recap: T (the paper's 5 is for loss scales of LLMs)
    recap_rule: Literal["summary", "level"] = "level"  # recap: c + i (summary) or the lab's level rule
    thresholds: tuple[float, ...] = (0.25, 1.0)  # constrained_lagrangian: proxy points θ_k
    lagrange_lr: float = 2.0  # constrained_lagrangian: multiplier step (the paper's 1e-2 is for long runs)
    prior: float = 0.0  # logit bonus on the task's template tokens at init (structured: a "pretrained" policy)
    eval_prompts: int = 16  # prompts of each greedy evaluation
    hv_reference: float = -0.1  # every coordinate of the hypervolume reference point
    seed: int = 0  # seed of prompts, sampling and initialization
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def make_task(spec: str) -> Any:
    """A task of :data:`TASKS` from a spec such as ``"multi_objective(power=2.0)"``."""
    import importlib

    name, kwargs = parse_spec(spec)
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


# ---- the methods: how K rewards become the learning signal --------------------------------------
class _Method:
    """``combine(ctx) -> (rewards or advantages (B,), metrics)``; ``feedback(ctx) -> metrics``."""

    gives_advantages = False

    def __init__(self, cfg: MultiObjectiveConfig, task: Any, generator: torch.Generator):
        self.weights = torch.tensor(cfg.weights, dtype=torch.float64, device=generator.device)

    def combine(self, ctx: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return weighted_sum(ctx["objectives"], self.weights), {"weights": self.weights.tolist()}

    def feedback(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {}


class _MultiLabel(_Method):
    def combine(self, ctx):
        r, _ = multi_label(ctx["objectives"], weights=self.weights, aggregation="normalize_then_sum",
                           group_size=ctx["group_size"])
        return r, {"weights": self.weights.tolist()}


class _Hypervolume(_Method):
    def __init__(self, cfg, task, generator):
        super().__init__(cfg, task, generator)
        self.shaper = HypervolumeWeighting(cfg.weights)
        self.shaper.update([cfg.hv_reference] * len(cfg.weights))       # reference point first

    def combine(self, ctx):
        r, m = self.shaper(ctx["objectives"])
        return r, {"weights": self.shaper.weights.tolist(), "meta": m["hv/meta"]}

    def feedback(self, ctx):
        return {"meta": self.shaper.update(ctx["evaluation"])["hv/meta"]}


class _Gradient(_Method):
    def __init__(self, cfg, task, generator):
        super().__init__(cfg, task, generator)
        self.shaper = GradientWeighting(cfg.weights, lr=cfg.weight_lr, reg=1.0)

    def combine(self, ctx):
        self.shaper.update(ctx["objective_gradients"]())
        r, _ = self.shaper(ctx["objectives"])
        return r, {"weights": self.shaper.weights.tolist()}


class _Recap(_Method):
    def __init__(self, cfg, task, generator):
        super().__init__(cfg, task, generator)
        self.shaper = RECAP(len(cfg.weights), window=cfg.recap_window, temperature=cfg.recap_temperature,
                           rule=cfg.recap_rule)

    def combine(self, ctx):
        # rewards in [0, 1] -> positive losses 1 + δ − mean r_k, so RECAP's ratio μ̃/μ reads "falling"
        self.shaper.update(1.0 + RECAP_OFFSET - ctx["objectives"].double().mean(0))
        r, _ = self.shaper(ctx["objectives"] * self.weights.to(ctx["objectives"].dtype))
        K = self.weights.shape[0]
        return r, {"weights": (self.shaper.lambdas * self.weights / K).tolist()}      # effective λ_k w_k / K


class _Pro(_Method):
    def __init__(self, cfg, task, generator):
        super().__init__(cfg, task, generator)
        if not (hasattr(task, "prompt_features") and hasattr(task, "preferred_objectives")):
            raise ValueError(f"method 'pro' needs a task with prompt features and preferred responses "
                             f"(task 'multi_objective'), got {cfg.task!r}")
        self.shaper = PreferenceOrchestrator(2, len(cfg.weights), lr=0.2, device=generator.device)

    def combine(self, ctx):
        prompts = ctx["prompts"]
        features = ctx["task"].prompt_features(prompts)
        self.shaper.fit(features, ctx["task"].preferred_objectives(prompts), steps=2)
        r, m = self.shaper(ctx["objectives"], features=features)
        return r, {"weights": m["pro/weights"]}


class _Constrained(_Method):
    gives_advantages = True

    def __init__(self, cfg, task, generator):
        super().__init__(cfg, task, generator)
        self.shaper = ConstrainedLagrangian(cfg.thresholds, lagrange_lr=cfg.lagrange_lr, generator=generator)

    def combine(self, ctx):
        rm_adv, _ = group_normalize(ctx["objectives"], group_size=ctx["group_size"])      # (B, K)
        kl_adv, _ = group_normalize(ctx["kl_rewards"], group_size=ctx["group_size"])      # (B,)
        a, m = self.shaper(rm_adv, kl_advantages=kl_adv)
        return a, {"weights": m["constrained/weights"], "lambda": m["constrained/lambda"]}

    def feedback(self, ctx):
        return {"lambda": self.shaper.update(ctx["objectives"].double().mean(0))["constrained/lambda"]}


class _Structured(_Method):
    def combine(self, ctx):
        r, _ = structured_output(ctx["objectives"], weights=self.weights)
        return r, {"weights": self.weights.tolist()}


METHODS: dict[str, Callable[..., _Method]] = {
    "fixed": _Method, "multi_label": _MultiLabel, "hypervolume_weighting": _Hypervolume,
    "gradient_weighting": _Gradient, "recap": _Recap, "pro": _Pro,
    "constrained_lagrangian": _Constrained, "structured_output": _Structured,
}


def _plot(history: History):
    from lab.viz.multi_objective import training_figure

    return training_figure(history)


@torch.no_grad()
def greedy_objectives(model: Any, task: Any, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy responses' objectives (n, K) and the responses (n, T)."""
    gen = model.generate(prompts, task.max_new_tokens, 0.0, None, eos_id=task.eos_id, pad_id=task.pad_id)
    return task.objectives(prompts, gen.tokens), gen.tokens


@experiment("multi_objective", MultiObjectiveConfig, paper=PAPER, arxiv="2509.11452", plot=_plot,
            smoke={"steps": 2, "n_prompts": 2, "group_size": 2, "eval_prompts": 2},
            summary="GRPO on K conflicting rewards: fixed, dynamic, constrained and prompt-aware weighting")
def multi_objective(cfg: MultiObjectiveConfig) -> History:
    check_choice("method", cfg.method, tuple(METHODS))
    for name in ("steps", "n_prompts", "group_size", "eval_prompts"):
        check_int(name, getattr(cfg, name), minimum=1)
    check_positive("lr", cfg.lr)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    task = make_task(cfg.task)
    K = len(task.objective_names)
    if len(cfg.weights) != K:
        raise ValueError(f"weights must have {K} entries for task {cfg.task!r} "
                         f"({', '.join(task.objective_names)}), got {len(cfg.weights)}")
    method = METHODS[cfg.method](cfg, task, generator)
    model = build_model("tabular", task, value_head=False, device=dev)
    if cfg.prior and hasattr(task, "template_prior"):
        with torch.no_grad():
            model.logits += cfg.prior * task.template_prior(dev)                  # (C, T, V) += (T, V)
    reference = copy.deepcopy(model).requires_grad_(False)
    optimizer = make("optimizer", "adam", model.parameters(), lr=cfg.lr)
    estimator = make_fn("advantage", cfg.advantage)
    loss_fn = make_fn("policy_loss", cfg.loss)
    eval_prompts = task.sample_prompts(cfg.eval_prompts, torch.Generator(device=dev).manual_seed(cfg.seed + 1))
    ref_point = [cfg.hv_reference] * K
    points: list[list[float]] = []
    history = History(meta={"algorithm": cfg.method, "task": cfg.task, "seed": cfg.seed,
                            "objectives": list(task.objective_names)})

    for step in progress.steps(cfg.steps, desc=f"multi-objective {cfg.method}", history=history):
        # ---- rollout and per-objective scores ---------------------------------------------------
        ro = rollout(model, task, cfg.n_prompts, cfg.group_size, generator=generator)
        objectives = task.objectives(ro.prompts, ro.tokens).float()                     # (B, K)
        with torch.no_grad():
            ref_logprobs = reference.score(ro.prompts, ro.tokens).logprobs               # (B, T)
        kl_rewards = -((ro.logprobs - ref_logprobs) * ro.mask).sum(-1)                   # −KL per response
        batch = {**ro.batch(), "ref_logprobs": ref_logprobs}

        def objective_gradients() -> torch.Tensor:
            # g_k = ∇θ loss(advantages from r_k alone), flattened: (K, P)
            rows = []
            for k in range(K):
                adv, _ = call_with(estimator, {**batch, "rewards": objectives[:, k]})
                scored = model.score(ro.prompts, ro.tokens)
                loss, _ = call_with(loss_fn, {**batch, "advantages": adv, "logprobs": scored.logprobs})
                grads = torch.autograd.grad(loss, list(model.parameters()))
                rows.append(torch.cat([g.reshape(-1) for g in grads]))
            return torch.stack(rows)

        ctx = {"objectives": objectives, "group_size": cfg.group_size, "prompts": ro.prompts, "task": task,
               "kl_rewards": kl_rewards, "objective_gradients": objective_gradients}
        signal, row = method.combine(ctx)
        # ---- advantages and one policy-gradient step -------------------------------------------
        if method.gives_advantages:
            advantages = signal.float()
        else:
            advantages, _ = call_with(estimator, {**batch, "rewards": signal.float()})
        scored = model.score(ro.prompts, ro.tokens)
        loss, _ = call_with(loss_fn, {**batch, "advantages": advantages.detach(), "logprobs": scored.logprobs,
                                      "entropy": scored.entropy})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # ---- greedy evaluation, Pareto front, feedback ------------------------------------------
        evals, tokens = greedy_objectives(model, task, eval_prompts)
        evaluation = evals.double().mean(0)
        points.append(evaluation.tolist())
        ctx["evaluation"] = evaluation
        row.update(method.feedback(ctx))
        row.update({f"obj/{n}": float(objectives[:, k].mean()) for k, n in enumerate(task.objective_names)})
        row.update({f"eval/{n}": float(evaluation[k]) for k, n in enumerate(task.objective_names)})
        row.update(loss=float(loss.detach()), reward=float(signal.mean()) if not method.gives_advantages else
                   float(weighted_sum(objectives, torch.tensor(cfg.weights, device=dev)).mean()),
                   hypervolume=hypervolume(pareto_front(points), ref_point) if K <= 3 else float("nan"))
        if hasattr(task, "true_reward"):
            row["true_reward"] = float(task.true_reward(ro.prompts, ro.tokens).mean())
            row["proxy_reward"] = float(task.reward(ro.prompts, ro.tokens).mean())
            row["eval/true_reward"] = float(task.true_reward(eval_prompts, tokens).mean())
        history.append(step, **row)

    history.artifacts["points"] = points
    history.artifacts["front"] = pareto_front(points).tolist()
    history.artifacts["final"] = points[-1]
    if hasattr(task, "front"):
        history.artifacts["task_front"] = task.front("cpu").tolist()
    return history


def pareto_sweep(cfg: MultiObjectiveConfig, weight_grid: tuple[tuple[float, ...], ...]) -> dict[str, Any]:
    """Run ``cfg`` once per initial weight vector; the final greedy points, their front and HV:
    ``{"points", "front", "hypervolume", "weights"}``.

    The sweep keeps a History with one row per finished run (``point``: its final greedy vector,
    ``weights``: its initial weights, ``hypervolume``: of the front of the points so far) and hands
    it to its progress loop, so a live panel draws the points finished so far while the rest run;
    the result is :func:`sweep_result` of that History once every run is done.
    """
    if not weight_grid:
        raise ValueError("weight_grid must hold at least one weight vector")
    ref = [cfg.hv_reference] * len(weight_grid[0])
    history = History(meta={"algorithm": cfg.method, "hv_reference": cfg.hv_reference})
    points: list[list[float]] = []
    for i, w in enumerate(progress.track(weight_grid, desc=f"{cfg.method} weight sweep", history=history)):
        points.append(run_final(replace(cfg, weights=w)))
        history.append(i, point=points[-1], weights=list(w),
                       hypervolume=hypervolume(pareto_front(points), ref))
    return sweep_result(history)


def sweep_result(history: History) -> dict[str, Any]:
    """A :func:`pareto_sweep` History (complete, or the runs finished so far) as its result dict:
    the final points, their Pareto front, its hypervolume and the initial weight vectors."""
    if not len(history):
        raise ValueError("the sweep has no finished run yet")
    points = history["point"].tolist()
    return {"points": points, "front": pareto_front(points).tolist(),
            "hypervolume": float(history["hypervolume"][-1]), "weights": history["weights"].tolist()}


def run_final(cfg: MultiObjectiveConfig) -> list[float]:
    """The last greedy objective vector of one run."""
    return multi_objective(cfg).artifacts["final"]


def compare_methods(cfg: MultiObjectiveConfig, methods: tuple[str, ...]) -> Runs:
    """One run per method on the same config and seed."""
    return Runs({m: multi_objective(replace(cfg, method=m)) for m in methods})


__all__ = ["MultiObjectiveConfig", "multi_objective", "pareto_sweep", "sweep_result", "compare_methods",
           "compare_fronts", "METHODS", "make_task", "greedy_objectives", "fixed_vs_recap_fronts",
           "fixed_vs_constrained", "PROXY", "STRUCTURED"]


WEIGHT_GRID: tuple[tuple[float, float], ...] = ((0.2, 0.8), (0.4, 0.6), (0.6, 0.4), (0.8, 0.2))
"""Initial weight vectors of :func:`compare_fronts` (two objectives)."""


def compare_fronts(cfg: MultiObjectiveConfig, methods: tuple[str, ...] = ("fixed", "recap"),
                   grid: tuple[tuple[float, ...], ...] = WEIGHT_GRID) -> dict[str, dict[str, Any]]:
    """:func:`pareto_sweep` per method on the same grid: ``{method: {points, front, hypervolume, weights}}``."""
    return {m: pareto_sweep(replace(cfg, method=m), grid) for m in methods}


# ---------------------------------------------------------------------------------------------
# The lesson's claims (notebook 12), checked by tests/test_claims.py
# ---------------------------------------------------------------------------------------------
from lab.claims import Claim  # noqa: E402  (claims sit after the experiments they run)

PROXY = MultiObjectiveConfig(task="proxy_reward", weights=(1.5, 1.0), thresholds=(0.25, 1.0))
"""The proxy-reward scenario of notebook 12 (c)."""
STRUCTURED = MultiObjectiveConfig(method="structured_output", task="structured",
                                  weights=(0.2, 0.1, 0.3, 0.3, 0.1), prior=4.0, lr=0.1)
"""The RL-Struct scenario of notebook 12 (d)."""


def fixed_vs_recap_fronts(cfg: MultiObjectiveConfig) -> dict[str, dict[str, Any]]:
    """Notebook 12 (b): :func:`compare_fronts` of fixed weights and RECAP on ``cfg``."""
    return compare_fronts(cfg, ("fixed", "recap"))


def fixed_vs_constrained(cfg: MultiObjectiveConfig) -> Runs:
    """Notebook 12 (c): fixed weights and the Lagrange multipliers on ``cfg``."""
    return compare_methods(cfg, ("fixed", "constrained_lagrangian"))


CLAIMS = [
    Claim(
        notebook="12_multi_objective", panel="run",
        text="Prompt-aware weights (PRO) give each prompt type its own trade-off: both greedy "
             "objectives end at 0.25 or more, where equal fixed weights end at brevity alone.",
        experiment="multi_objective", config={"method": "pro"},
        control={"method": "fixed"},
        holds=lambda h: min(h.artifacts["final"]) >= 0.25,
        control_text="fixed equal weights: one linear scalarization for every prompt ends at a "
                     "corner of the front",
    ),
    Claim(
        notebook="12_multi_objective", panel="front",
        text="Fixed weights miss the non-convex gap: they end at the two ends of the front, while "
             "RECAP's balancing weights reach points between them (hypervolume larger by > 0.1).",
        experiment=fixed_vs_recap_fronts, base=MultiObjectiveConfig(steps=30),
        control={"recap_temperature": 100.0},
        holds=lambda r: r["recap"]["hypervolume"] > r["fixed"]["hypervolume"] + 0.1,
        control_text="RECAP at temperature 100: λ = K·softmax(π/T) is uniform, i.e. fixed equal weights",
    ),
    Claim(
        notebook="12_multi_objective", panel="proxy",
        text="Lagrange multipliers stop the over-optimization of a proxy: the hidden true reward stays "
             "above 0.6, while fixed weights fill the answer with keywords and drive it below −0.5.",
        experiment=fixed_vs_constrained, base=PROXY,
        control={"lagrange_lr": 0.0},
        holds=lambda runs: runs["constrained_lagrangian"]["true_reward"][-5:].mean() > 0.6
        and runs["fixed"]["true_reward"][-5:].mean() < -0.5,
        control_text="multiplier step 0: λ never moves, nothing reacts when the keyword RM passes "
                     "its proxy point",
    ),
    Claim(
        notebook="12_multi_objective", panel="struct",
        text="RL-Struct's gated reward teaches structure first: from a policy with the syntax prior, "
             "validity rises by more than 0.3 and content correctness by more than 0.2 in 40 steps.",
        experiment="multi_objective", base=STRUCTURED,
        control={"prior": 0.0},
        holds=lambda h: h["obj/valid"][-5:].mean() > h["obj/valid"][:5].mean() + 0.3
        and h["obj/correct"][-5:].mean() > h["obj/correct"][:5].mean() + 0.2,
        control_text="no syntax prior: no sampled output parses, the gate gives every response the "
                     "same reward, and GRPO's advantages are zero",
    ),
]
