"""The group-relative zoo: every advantage estimator side by side, head-to-head training, per-token views.

Three experiments behind ``notebooks/07_group_relative_zoo.ipynb``:

- ``advantage_zoo`` (calculator): one group of rewards typed by the user plus an all-correct and an
  all-wrong group, fed to *every* registered advantage estimator (``lab.registry.available
  ("advantage")``, so estimators added later appear by themselves). Each estimator receives the
  batch entries its signature names (:func:`lab.rl.core.call_with`). The calculator also builds the
  extra structure some estimators need, from the same toy group: token entropies (the per-response
  metric spread over its tokens), a critic that predicts 0 (GAE, EGAE), Monte Carlo values that
  move linearly from the group mean to the response's reward along the response, with every
  second token uncertain (SPO-chain), and a depth-2 tree in which responses share their first half
  in pairs (SPO-tree). An estimator that still lacks an input is listed under
  ``artifacts['skipped']`` with the reason.
- :func:`head_to_head` (training curves): the same task, seed and budget for several
  (estimator, loss) pairs, each one a run of ``policy_optimization`` (no per-method code).
- ``token_view`` (what each method up- or down-weights): a batch sampled from a randomly initialized
  tabular policy, and per token: STEER's weight, GTPO's conflict multiplier λ, HAPO's h̃, clip
  bounds and adaptive temperature, and D³S's token selection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lab.checks import check_int, check_positive
from lab.experiments._base import experiment, resolve_device, run
from lab.history import History, Runs
from lab.models.policy import TabularPolicy
from lab.registry import available, get, parse_spec
from lab.rl.core import call_with, expand_advantages, make_fn, masked_mean
from lab.sampling.d3s import D3S
from lab.rl.gtpo import conflict_masks, conflict_weights
from lab.rl.hapo import adaptive_clip_bounds, normalized_entropy
from lab.sampling.adaptive_temperature import AdaptiveTemperature
from lab.rl.rollout import rollout, token_rewards
from lab.rl.steer import entropy_change_score, steer_weights
from toy_envs.token_tasks import make_task

PAPER = "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models"


def parse_numbers(name: str, text: str, kind: type = float) -> list:
    """``"1, 0, 0.5"`` -> [1.0, 0.0, 0.5]; ValueError naming the field otherwise."""
    try:
        values = [kind(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"{name} must be a list of numbers like '1, 0, 0, 1', got {text!r}") from None
    if not values:
        raise ValueError(f"{name} must hold at least one number, got {text!r}")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"{name} must hold finite numbers, got {text!r}")
    return values


# ---------------------------------------------------------------------------------------------
# (a) the advantage calculator
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdvantageZooConfig:
    """Config of ``advantage_zoo``."""

    rewards: str = "1, 0, 0, 1"  # the rewards of one group of G responses
    lengths: str = "2, 4, 3, 1"  # their lengths in tokens (HAPO, CANON-by-length, aggregation)
    metric: str = "0.1, 0.2, 0.9, 0.8"  # their mean token entropies (CANON, STEER-like views)
    homogeneous: bool = True  # add an all-correct and an all-wrong group of the same shape
    r_max: float = 1.0  # reward of a correct answer (the all-correct group, NGRPO's virtual sample)
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def zoo_batch(rewards: list[float], lengths: list[int], metric: list[float], *,
              homogeneous: bool = True, r_max: float = 1.0, device: Any = None) -> dict[str, Any]:
    """The calculator's batch (Part F.1 names) for one group, optionally + all-correct/all-wrong,
    with every tensor on ``device`` (default: the current default device)."""
    G = len(rewards)
    if len(lengths) != G or len(metric) != G:
        raise ValueError(f"rewards, lengths and metric must have the same number of entries, "
                         f"got {G}, {len(lengths)}, {len(metric)}")
    if min(lengths) < 1:
        raise ValueError(f"lengths must be >= 1, got {lengths}")
    groups = [rewards] + ([[r_max] * G, [0.0] * G] if homogeneous else [])
    R = torch.tensor([r for g in groups for r in g], dtype=torch.float64, device=device)      # (B,)
    n, B, T = len(groups), len(groups) * G, max(lengths)
    L = torch.tensor(lengths * n, device=device)
    positions = torch.arange(T, device=device)
    mask = positions[None, :] < L[:, None]                                     # (B, T)
    entropy = torch.tensor(metric * n, dtype=torch.float64, device=device)[:, None].expand(B, T) * mask
    group_ids = torch.arange(n, device=device).repeat_interleave(G)
    mean_g = R.view(n, G).mean(-1).repeat_interleave(G)
    # MC values V(y_{≤t}) moving linearly from the group mean to R_i along the response
    frac = ((positions[None, :] + 1).double() / L[:, None]).clamp(max=1.0)
    cut_values = (mean_g[:, None] + (R - mean_g)[:, None] * frac) * mask
    # every second token uncertain (π_old = 0.5), the others confident (0.95)
    old_logprobs = torch.where(positions % 2 == 1, math.log(0.5), math.log(0.95)).double()
    old_logprobs = old_logprobs.expand(B, T) * mask
    # a depth-2 tree: pairs of responses share their first half
    node_ids = torch.stack([group_ids * G + torch.arange(B, device=device) % G // 2, B + torch.arange(B, device=device)], dim=1)
    segment_ids = (positions[None, :] >= (L[:, None] + 1) // 2).long()
    return {"rewards": R, "group_size": G, "group_ids": group_ids, "mask": mask, "lengths": L,
            "entropy": entropy, "metric": None, "token_rewards": token_rewards(R, mask),
            "values": torch.zeros(B, T, dtype=torch.float64, device=device),
            "is_finished": torch.ones(B, dtype=torch.bool, device=device),
            "old_logprobs": old_logprobs, "cut_values": cut_values, "node_ids": node_ids,
            "segment_ids": segment_ids, "token_ids": torch.zeros(B, T, dtype=torch.long, device=device), "step": 0}


def _plot_zoo(history: History):
    from lab.viz.zoo import advantage_zoo_figure

    return advantage_zoo_figure(history)


@experiment("advantage_zoo", AdvantageZooConfig, paper=PAPER, arxiv="2402.03300", plot=_plot_zoo,
            summary="Every registered advantage estimator on one group (+ all-correct, all-wrong)",
            smoke={"rewards": "1, 0", "lengths": "1, 2", "metric": "0.5, 0.1"})
def advantage_zoo(cfg: AdvantageZooConfig) -> History:
    rewards = parse_numbers("rewards", cfg.rewards)
    lengths = parse_numbers("lengths", cfg.lengths, int)
    metric = parse_numbers("metric", cfg.metric)
    dev = resolve_device(cfg.device)
    batch = zoo_batch(rewards, lengths, metric, homogeneous=cfg.homogeneous, r_max=cfg.r_max, device=dev)
    G = len(rewards)
    n_groups = batch["rewards"].shape[0] // G
    names = ["your group", "all correct", "all wrong"][:n_groups]
    history = History(meta={"algorithm": "advantage_zoo"})
    table: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    for k, name in enumerate(available("advantage")):
        try:
            advantages, metrics = call_with(make_fn("advantage", name), batch)
        except (TypeError, ValueError) as exc:       # an input the calculator cannot build
            skipped[name] = str(exc)
            continue
        adv = expand_advantages(advantages.detach().double(), batch["mask"])    # (B, T)
        per_response = masked_mean(adv, batch["mask"], dim=-1)                 # (B,)
        table[name] = per_response.cpu().tolist()
        history.append(k, adv_mean=float(per_response.mean()), adv_std=float(per_response.std(unbiased=False)),
                       adv_abs_max=float(per_response.abs().max()))
    history.artifacts.update({
        "advantages": table, "skipped": skipped, "rewards": batch["rewards"].cpu().tolist(),
        "lengths": batch["lengths"].cpu().tolist(), "group_size": G, "groups": names,
        "labels": [f"{names[i // G]}: y{i % G} R={r:g}" for i, r in enumerate(batch["rewards"].cpu().tolist())]})
    return history


# ---------------------------------------------------------------------------------------------
# (b) head-to-head training
# ---------------------------------------------------------------------------------------------
METHODS: tuple[str, ...] = ("grpo + grpo(beta=0.0)", "ngrpo + ngrpo", "bnpo + dapo",
                            "hapo_token + hapo", "grpo + steer", "grpo + gtpo(initial_entropy=2.7)")
"""Pairs "advantage + loss" of the head-to-head panel's menu (the papers' settings)."""

DEFAULT_METHODS: tuple[str, ...] = ("grpo + grpo(beta=0.0)", "ngrpo + ngrpo")
"""The pairs the head-to-head panel opens on (its claim: NGRPO against GRPO)."""


@dataclass(frozen=True)
class HeadToHeadConfig:
    """Config of :func:`head_to_head` (each method is one ``policy_optimization`` run)."""

    methods: tuple[str, ...] = DEFAULT_METHODS  # "advantage spec + loss spec" pairs
    task: str = "reverse(difficulty=3, alphabet=3)"  # token task spec (3 letters: lengths vary, accuracy starts near 0)
    steps: int = 20  # training steps of each run
    epochs: int = 2  # passes over each rollout (more epochs -> more off-policy updates, more clipping)
    minibatches: int = 2  # updates per epoch (1 epoch × 1 minibatch: ratio ≡ 1, nothing clips)
    lr: float = 0.1  # learning rate
    n_prompts: int = 8  # prompts per rollout
    group_size: int = 8  # G
    seed: int = 0  # the same seed for every method


def split_method(method: str) -> tuple[str, str]:
    """``"ngrpo + ngrpo(clip_eps_high=0.3)"`` -> ("ngrpo", "ngrpo(clip_eps_high=0.3)")."""
    parts = [p.strip() for p in method.split("+")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"methods entries must look like 'advantage + loss', got {method!r}")
    for part, kind in zip(parts, ("advantage", "policy_loss")):
        name, _ = parse_spec(part)
        if name not in available(kind):
            raise KeyError(f"unknown {kind} {name!r} in {method!r}; valid: {', '.join(available(kind))}")
    return parts[0], parts[1]


def head_to_head(cfg: HeadToHeadConfig) -> Runs:
    """One ``policy_optimization`` run per method, same task, seed and budget: labelled Runs."""
    check_int("steps", cfg.steps, minimum=1)
    check_positive("lr", cfg.lr)
    if not cfg.methods:
        raise ValueError("methods must name at least one 'advantage + loss' pair")
    runs = {}
    for method in cfg.methods:
        advantage, loss = split_method(method)
        runs[method] = run("policy_optimization", task=cfg.task, advantage=advantage, loss=loss,
                           steps=cfg.steps, epochs=cfg.epochs, minibatches=cfg.minibatches, lr=cfg.lr,
                           n_prompts=cfg.n_prompts, group_size=cfg.group_size, seed=cfg.seed)
    return Runs(runs)


# ---------------------------------------------------------------------------------------------
# (c) the per-token view
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenViewConfig:
    """Config of ``token_view``."""

    task: str = "reverse(difficulty=3)"  # token task spec (partial credit gives mixed groups)
    n_prompts: int = 2  # prompts in the batch
    group_size: int = 6  # G responses per prompt
    init_std: float = 0.5  # spread of the random initial logits (0 = uniform policy)
    seed: int = 0  # seed of the policy, prompts and samples
    d3s_keep: float = 0.3  # D³S: share of tokens kept (K_t) in the selected rows
    d3s_rows: float = 0.5  # D³S: share of rollouts kept (N_t)
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_tokens(history: History):
    from lab.viz.zoo import token_view_figure

    return token_view_figure(history)


@experiment("token_view", TokenViewConfig, paper=PAPER, arxiv="2402.03300", plot=_plot_tokens,
            summary="Per token: STEER weights, GTPO conflicts, HAPO bounds/temperature, D3S selection",
            smoke={"task": "reverse(difficulty=2)", "n_prompts": 1, "group_size": 2})
def token_view(cfg: TokenViewConfig) -> History:
    check_positive("init_std", cfg.init_std, allow_zero=True)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    task_name, task_kwargs = parse_spec(cfg.task)
    task = make_task(task_name, **task_kwargs)
    policy = TabularPolicy.for_task(task, init_std=cfg.init_std, generator=generator, device=dev)
    ro = rollout(policy, task, cfg.n_prompts, cfg.group_size, generator=generator)
    batch = ro.batch()
    advantages, _ = call_with(get("advantage", "grpo"), batch)                 # (B,)
    mask = ro.mask
    adv = expand_advantages(advantages, mask)                                  # (B, T)
    # STEER: Ω and weights (on-policy: ℓ = ℓ^old)
    omega = entropy_change_score(ro.logprobs, ro.logprobs, adv, ro.entropy)
    steer_w = steer_weights(omega, mask)
    # GTPO: conflict runs and multipliers
    forward, backward = conflict_masks(ro.tokens, advantages, mask, group_ids=ro.group_ids)
    lam = conflict_weights(forward, backward, advantages)
    # HAPO: h̃, clip bounds, temperature (statistics of this batch)
    h_tilde = normalized_entropy(ro.entropy, mask)
    eps_low, eps_high = adaptive_clip_bounds(h_tilde)
    sampler = AdaptiveTemperature()
    sampler.update(ro.entropy, mask)
    temperature = sampler.temperature * (1.0 + sampler.tau * h_tilde)
    # D³S: rows and tokens kept
    d3s_mask, d3s_metrics = D3S(n_init=cfg.d3s_rows, k_init=cfg.d3s_keep).select(advantages, ro.entropy, mask)

    def grid(x: torch.Tensor) -> list[list[float | None]]:
        return [[float(v) if m else None for v, m in zip(row, mrow)] for row, mrow in zip(x.tolist(), mask.tolist())]

    history = History(meta={"algorithm": "token_view", "task": cfg.task, "seed": cfg.seed})
    history.append(0, steer_weight_mean=float(masked_mean(steer_w, mask)),
                   gtpo_conflict_frac=float(masked_mean((forward | backward).float(), mask)),
                   hapo_eps_high_mean=float(masked_mean(eps_high, mask)), **d3s_metrics)
    history.artifacts.update({
        "prompts": [task.decode(p) for p in ro.prompts],
        "tokens": [[task.vocab[t] for t in row] for row in ro.tokens.tolist()],
        "rewards": ro.rewards.tolist(), "advantages": advantages.tolist(),
        "entropy": grid(ro.entropy), "steer_weight": grid(steer_w), "steer_omega": grid(omega),
        "gtpo_lambda": grid(lam), "gtpo_conflict": grid((forward | backward).float()),
        "hapo_h": grid(h_tilde), "hapo_eps_low": grid(eps_low), "hapo_eps_high": grid(eps_high),
        "hapo_temperature": grid(temperature), "d3s_keep": grid(d3s_mask.float())})
    return history


# ---------------------------------------------------------------------------------------------
# The lesson's claims (notebook 07, panels a-c): checked by ``pytest -m claims``
# ---------------------------------------------------------------------------------------------
def _pick(runs: Runs, prefix: str) -> History:
    """The run whose "advantage + loss" label starts with ``prefix`` (first match)."""
    for label, history in runs.items():
        if label.startswith(prefix):
            return history
    raise KeyError(f"no run starting with {prefix!r} among {list(runs)}")


def _end(history: History, key: str) -> float:
    return float(history[key][-5:].mean())


def _ngrpo_gives_all_wrong_groups_a_signal(h: History) -> bool:
    """Some response gets A = 0 from GRPO but A < 0 from NGRPO (a homogeneous group)."""
    table = h.artifacts["advantages"]
    return any(g == 0 and n < 0 for g, n in zip(table["grpo"], table["ngrpo"]))


def _ngrpo_clips_asymmetrically(runs: Runs) -> bool:
    grpo, ngrpo = _pick(runs, "grpo +"), _pick(runs, "ngrpo +")
    low_g, low_n = float(grpo["clip_frac_low"].mean()), float(ngrpo["clip_frac_low"].mean())
    high_g, high_n = float(grpo["clip_frac_high"].mean()), float(ngrpo["clip_frac_high"].mean())
    return low_n > 1.5 * low_g and high_n < high_g


def _steer_omega_weight_correlation(h: History) -> float:
    w = [v for row in h.artifacts["steer_weight"] for v in row if v is not None]
    o = [v for row in h.artifacts["steer_omega"] for v in row if v is not None]
    if np.std(w) == 0 or np.std(o) == 0:
        return 0.0
    return float(np.corrcoef(w, o)[0, 1])


BANDIT4 = "token_bandit(n_contexts=4)"
SHORT = "reverse(difficulty=2, alphabet=3, slack=2)"
STEER_FLAT = "grpo + steer(weight_min=1.0, weight_max=1.0)"


def _claims() -> list:
    from lab.claims import Claim

    base = HeadToHeadConfig()
    return [
        Claim(notebook="07_group_relative_zoo", panel="calculator",
              text="An all-wrong group gets zero advantage from GRPO and its relatives (RLOO, Dr. GRPO, "
                   "BNPO, ...): nothing to learn. NGRPO's virtual maximum-reward answer makes it negative.",
              experiment="advantage_zoo", seed_field=None, holds=_ngrpo_gives_all_wrong_groups_a_signal,
              control={"homogeneous": False},
              control_text="only your mixed group: GRPO's advantages are non-zero wherever NGRPO's are"),
        Claim(notebook="07_group_relative_zoo", panel="head_to_head",
              text="With 2 epochs × 2 minibatches the ratio leaves 1, and NGRPO's tight lower bound "
                   "(ε_low = 0.16, on its calibrated, more negative advantages) clips over 1.5× more "
                   "negative-advantage tokens than GRPO, its loose upper bound (ε_high = 0.24) fewer "
                   "positive ones.",
              experiment=head_to_head, base=base, holds=_ngrpo_clips_asymmetrically,
              control={"epochs": 1, "minibatches": 1},
              control_text="one epoch, one minibatch: on-policy updates, nothing clips"),
        Claim(notebook="07_group_relative_zoo", panel="head_to_head", name="ngrpo",
              text="On 3-letter reversal with partial credit, where accuracy starts near zero, NGRPO learns "
                   "faster than GRPO (reward after 20 steps higher by > 0.03). The gain is the calibration: "
                   "with K = 0 virtual answers (the same loss) it is gone.",
              experiment=head_to_head, base=base,
              holds=lambda runs: _end(_pick(runs, "ngrpo"), "reward") > _end(_pick(runs, "grpo +"), "reward") + 0.03,
              control={"methods": ("grpo + grpo(beta=0.0)", "ngrpo(n_virtual=0) + ngrpo")},
              control_text="ngrpo(n_virtual=0): GRPO's advantages with NGRPO's loss learn like GRPO"),
        Claim(notebook="07_group_relative_zoo", panel="head_to_head", name="hapo",
              text="On the 4-context bandit (2 epochs, 1 minibatch) HAPO keeps the entropy higher than "
                   "GRPO (by > 0.15 nats after 30 steps): its advantage redistribution A·(1 + β h̃) "
                   "weights the uncertain tokens up.",
              experiment=head_to_head, base=base,
              config={"task": BANDIT4, "minibatches": 1, "methods": ("grpo + grpo(beta=0.0)", "hapo_token + hapo")},
              holds=lambda runs: _end(_pick(runs, "hapo"), "entropy") > _end(_pick(runs, "grpo +"), "entropy") + 0.15,
              control={"methods": ("grpo + grpo(beta=0.0)", "hapo_token + hapo(adv_beta=0.0, clip_alpha=0.0)")},
              control_text="HAPO without redistribution and adaptive clipping: GRPO's entropy"),
        Claim(notebook="07_group_relative_zoo", panel="head_to_head", name="steer", reproduced=False,
              text="STEER's higher entropy does not show at the paper's weight range: with weights in "
                   "[0.8, 1.2] the final entropy on 2-letter reversal is within 0.025 nats of the same loss "
                   "with every weight 1. The mechanism is there: widen the range to [0.01, 1.99] and the "
                   "entropy stays clearly higher (+0.04 to +0.07); the paper's range moves a toy too little.",
              experiment=head_to_head, base=base,
              config={"task": SHORT, "methods": ("grpo + steer", STEER_FLAT)},
              holds=lambda runs: abs(_end(_pick(runs, "grpo + steer"), "entropy") - _end(runs[STEER_FLAT], "entropy")) < 0.025,
              control={"methods": ("grpo + steer(weight_min=0.01, weight_max=1.99)", STEER_FLAT)},
              control_text="weights in [0.01, 1.99]: the entropy gap opens"),
        Claim(notebook="07_group_relative_zoo", panel="head_to_head", name="gtpo", reproduced=False,
              text="GTPO does not keep the entropy higher here: on the 4-context bandit it ends near half of "
                   "GRPO's entropy (below 0.6×; 0.35-0.53× over seeds 0-2). One-token answers are all 'conflict' tokens (the same arm is rewarded in one "
                   "sample and not in another), and GTPO doubles their positive updates and skips their "
                   "negative ones, so the policy sharpens. Without the doubling (conflict_weight = 1) the "
                   "entropy is back near GRPO's.",
              experiment=head_to_head, base=base,
              config={"task": BANDIT4, "methods": ("grpo + grpo(beta=0.0)", "grpo + gtpo(initial_entropy=2.7)")},
              holds=lambda runs: _end(_pick(runs, "grpo + gtpo"), "entropy") < 0.6 * _end(_pick(runs, "grpo + grpo"), "entropy"),
              control={"methods": ("grpo + grpo(beta=0.0)", "grpo + gtpo(initial_entropy=2.7, conflict_weight=1.0)")},
              control_text="conflict_weight = 1: no doubling of conflict tokens"),
        Claim(notebook="07_group_relative_zoo", panel="token_view",
              text="STEER's weight falls as the token's predicted entropy change Ω grows (correlation "
                   "below −0.9): the steps that would move the entropy most are damped.",
              experiment="token_view", config={"init_std": 1.0},
              holds=lambda h: _steer_omega_weight_correlation(h) < -0.9,
              control={"init_std": 0.0},
              control_text="a uniform policy: log π + H = 0 for every token, Ω ≡ 0, every weight is 1"),
    ]


CLAIMS = _claims()
"""Notebook 07's claims for the calculator, head-to-head and token panels (see :mod:`lab.claims`)."""


__all__ = ["AdvantageZooConfig", "HeadToHeadConfig", "METHODS", "DEFAULT_METHODS", "TokenViewConfig", "advantage_zoo",
           "head_to_head", "parse_numbers", "split_method", "token_view", "zoo_batch", "CLAIMS"]
