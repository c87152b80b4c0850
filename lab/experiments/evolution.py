"""Experiments ``es_regression``, ``es_cartpole`` and ``es_rank_sweep``: ES vs EGGROLL vs backprop.

- ``es_regression``: an MLP (16 -> 32 -> 8) fits a random teacher MLP on 128 fixed inputs.
  Any registry optimizer: a gradient-free one (``es``, ``eggroll``; ``requires_fitness``) gets
  the fitness ``-MSE`` of every member, evaluated in one batched call
  (``lab.optim.es.population_call``); any other (``adam``, ``sgd``...) is backprop. The History
  holds ``loss`` (MSE of the current weights) and cumulative ``wall_time``.
- ``es_cartpole``: a linear policy ``action = argmax(W obs + b)``, W (2, 4), on gymnasium's
  vectorized CartPole, one environment per member; fitness = episode return (capped at
  ``max_steps``). The policy is applied to all members at once; for EGGROLL the matrix is used in
  factored form, ``obs W^T + (obs B_i) A_i^T``. The History holds the mean population ``reward``
  and, as ``eval_reward``, the mean return of the generation's current (unperturbed) policy over
  ``EVAL_EPISODES`` episodes run in the same vector env as its population (before its update).
- ``es_rank_sweep``: at fixed weights of the regression MLP, repeated gradient estimates of
  EGGROLL for each rank and of full-rank ES (same z-score shaping): cosine with the backprop
  gradient, relative variance ``E||g - mean g||^2 / ||mean g||^2`` and wall time per estimate.
  Scale-free measures, because EGGROLL's update is sigma*sqrt(N) times ES's.

``lr = None`` picks a learning rate that works for the method on this task (``DEFAULT_LR``).

Devices: ``device="auto"`` (CUDA when available, else CPU) holds the models, data, noise
generators and optimizer state. CartPole is the exception by nature: gymnasium's vectorized
CartPole steps on the CPU in numpy, so ``es_cartpole`` keeps the policy parameters and the
population's perturbations on the device and moves only each step's observations there (and the
chosen actions back, one small (N,) array per step); the returns come back as a device tensor.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lab import progress
from lab.checks import check_int, check_positive
from lab.claims import Claim
from lab.experiments._base import experiment, resolve_device, sweep
from lab.experiments.optimizers import settings
from lab.experiments.sharpness import make_optimizer
from lab.history import History, Runs
from lab.models import MLP
from lab.optim.eggroll import EGGROLL
from lab.optim.es import ES, LowRankBatch, population_call
from lab.registry import parse_spec

DEFAULT_LR = {"es": 0.02, "eggroll": 0.5, "adam": 0.01, "sgd": 0.1}
"""Learning rates per method for these tasks (``lr=None``); other optimizers get 0.01."""
CARTPOLE_LR = {"es": 0.05, "eggroll": 2.0}


def _lr(spec: str, lr: float | None, table: dict[str, float]) -> float:
    return lr if lr is not None else table.get(parse_spec(spec)[0], 0.01)


def _gradient_free(opt: torch.optim.Optimizer) -> bool:
    return bool(getattr(opt, "requires_fitness", False))


def _seeded_mlp(sizes: tuple[int, int, int], g: torch.Generator) -> MLP:
    """``MLP(in, (hidden,), out)`` with torch's default init drawn from ``g``, on ``g``'s device."""
    with torch.device(g.device):
        model = MLP(sizes[0], (sizes[1],), sizes[2], activation="tanh")
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=g)
                layer.bias.uniform_(-bound, bound, generator=g)
    return model


def _regression_task(hidden: int, seed: int, device: torch.device | str = "cpu"):
    """(model, x (128, 16), y (128, 8)): a student MLP and a random teacher's outputs, on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    teacher = _seeded_mlp((16, hidden, 8), g)
    x = torch.randn(128, 16, generator=g, device=device)
    with torch.no_grad():
        y = teacher(x)
    return _seeded_mlp((16, hidden, 8), g), x, y


def _mse_fitness(model: nn.Module, opt: ES, x: torch.Tensor, y: torch.Tensor):
    def fitness(batch):
        out = population_call(model, opt.params, batch, x)  # (N, 128, 8)
        return -((out - y) ** 2).mean(dim=(1, 2))  # (N,)
    return fitness


# ---- regression -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ESRegressionConfig:
    """Config of ``es_regression``."""

    optimizer: str = "eggroll"  # registry spec: "es", "eggroll", or a backprop optimizer ("adam")
    population: int = 32  # ES/EGGROLL members per step (even)
    sigma: float = 0.05  # ES/EGGROLL noise scale
    rank: int = 4  # EGGROLL rank per weight matrix
    lr: float | None = None  # learning rate; None = DEFAULT_LR of the method
    steps: int = 60  # optimizer steps
    hidden: int = 32  # hidden units of student and teacher
    seed: int = 0  # seed of teacher, data, student init and noise
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_regression(result):
    from lab.viz.figures import curves

    return curves(result, ["loss"], log_y=True)


@experiment("es_regression", ESRegressionConfig, paper="Evolution Strategies at the Hyperscale",
            arxiv="2511.16652", plot=_plot_regression, smoke={"steps": 3, "population": 8},
            summary="ES vs EGGROLL vs backprop fitting a teacher MLP")
def es_regression(cfg: ESRegressionConfig) -> History:
    check_int("steps", cfg.steps, minimum=1)
    model, x, y = _regression_task(cfg.hidden, cfg.seed, resolve_device(cfg.device))
    opt = make_optimizer(cfg.optimizer, list(model.parameters()), _lr(cfg.optimizer, cfg.lr, DEFAULT_LR),
                         {"population": cfg.population, "sigma": cfg.sigma, "rank": cfg.rank,
                          "seed": cfg.seed})
    fitness = _mse_fitness(model, opt, x, y) if _gradient_free(opt) else None
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    elapsed, losses, times = 0.0, [], []
    written = 0

    def flush() -> None:                    # the steps run so far into the History (one sync)
        nonlocal written
        if written < len(losses):
            for step, (loss, seconds) in enumerate(zip(torch.stack(losses[written:]).cpu().tolist(),
                                                       times[written:]), start=written):
                history.append(step, loss=loss, wall_time=seconds)
            written = len(losses)

    for step in progress.steps(cfg.steps + 1, desc=cfg.optimizer, history=history, flush=flush):
        with torch.no_grad():
            losses.append(((model(x) - y) ** 2).mean())
        times.append(elapsed)
        if step == cfg.steps:
            break
        start = time.perf_counter()
        if fitness is not None:
            opt.step(fitness)
        else:
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        elapsed += time.perf_counter() - start
    flush()
    return history


# ---- CartPole ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ESCartPoleConfig:
    """Config of ``es_cartpole``."""

    optimizer: str = "eggroll"  # "es" or "eggroll" (a registry spec of a gradient-free optimizer)
    population: int = 32  # members (= parallel CartPole environments) per generation
    sigma: float = 0.1  # noise scale
    rank: int = 1  # EGGROLL rank of the 2 x 4 policy matrix
    lr: float | None = None  # learning rate; None = CARTPOLE_LR of the method
    generations: int = 10  # optimizer steps
    max_steps: int = 200  # episode length cap
    seed: int = 0  # seed of the policy init, the noise and the environments
    device: str = "auto"  # policy and noise device ("auto" = CUDA when available); the env is numpy


def _plot_cartpole(result):
    from lab.viz.figures import curves

    return curves(result, ["reward", "eval_reward"])


def _policy_logits(obs: torch.Tensor, weight, bias: torch.Tensor) -> torch.Tensor:
    """Logits of every member's linear policy: obs (N, 4) -> (N, 2)."""
    if isinstance(weight, LowRankBatch):
        return weight.matmul(obs.unsqueeze(1)).squeeze(1) + bias  # obs W^T + (obs B_i) A_i^T
    return torch.einsum("ni,noi->no", obs, weight) + bias


def _episode_returns(weight, bias: torch.Tensor, n: int, max_steps: int, seed: int) -> torch.Tensor:
    """Return of one CartPole episode per member (vectorized env, no autoreset counted).

    The env is numpy on the CPU; observations go to the policy's device, actions come back.
    """
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    env = CartPoleVectorEnv(num_envs=n, max_episode_steps=max_steps)
    obs, _ = env.reset(seed=seed)
    returns = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    for _ in range(max_steps):
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=bias.device)   # (N, 4)
        logits = _policy_logits(obs_t, weight, bias)                            # (N, 2)
        obs, reward, terminated, truncated, _ = env.step(logits.argmax(-1).cpu().numpy())
        returns += reward * alive
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
    env.close()
    return torch.as_tensor(returns, device=bias.device)


@experiment("es_cartpole", ESCartPoleConfig, paper="Evolution Strategies at the Hyperscale",
            arxiv="2511.16652", plot=_plot_cartpole,
            smoke={"generations": 2, "population": 8, "max_steps": 20},
            summary="ES vs EGGROLL training a linear CartPole policy")
def es_cartpole(cfg: ESCartPoleConfig) -> History:
    check_int("generations", cfg.generations, minimum=1)
    check_int("max_steps", cfg.max_steps, minimum=1)
    dev = resolve_device(cfg.device)
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    policy = nn.Linear(4, 2, device=dev)
    with torch.no_grad():
        policy.weight.normal_(0.0, 0.1, generator=g)
        policy.bias.zero_()
    opt = make_optimizer(cfg.optimizer, list(policy.parameters()), _lr(cfg.optimizer, cfg.lr, CARTPOLE_LR),
                         {"population": cfg.population, "sigma": cfg.sigma, "rank": cfg.rank,
                          "seed": cfg.seed})
    if not _gradient_free(opt):
        raise ValueError(f"optimizer must be gradient-free (es, eggroll) for CartPole, got {cfg.optimizer!r}")
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    rewards_by_gen = []
    for gen in progress.steps(cfg.generations, desc=cfg.optimizer, history=history):
        env_seed = cfg.seed * 100_003 + gen
        current: list[torch.Tensor] = []

        def fitness(batch):  # batch = [weight (N, 2, 4) or LowRankBatch, bias (N, 2)]
            # the population and EVAL_EPISODES copies of the current policy in one vector env
            weight, bias = _with_current(batch, policy)
            returns = _episode_returns(weight, bias, cfg.population + EVAL_EPISODES, cfg.max_steps,
                                       env_seed)
            current.append(returns[cfg.population:])
            return returns[:cfg.population]

        rewards = opt.step(fitness)
        rewards_by_gen.append(torch.stack([rewards.mean(), current[0].mean()]))
    for gen, (reward, eval_reward) in enumerate(torch.stack(rewards_by_gen).cpu().tolist()):
        history.append(gen, reward=reward, eval_reward=eval_reward)
    return history


EVAL_EPISODES = 8
"""Episodes of the current (unperturbed) policy per generation, run beside the population."""


def _with_current(batch, policy: nn.Linear):
    """``(weight, bias)`` of the population followed by ``EVAL_EPISODES`` copies of ``policy``."""
    weight, bias = batch
    k = EVAL_EPISODES
    bias = torch.cat([bias, policy.bias.detach().expand(k, -1)])                       # (N + k, 2)
    if isinstance(weight, LowRankBatch):                                               # A = B = 0
        zeros_a = weight.A.new_zeros((k, *weight.A.shape[1:]))
        zeros_b = weight.B.new_zeros((k, *weight.B.shape[1:]))
        return LowRankBatch(weight=weight.weight, A=torch.cat([weight.A, zeros_a]),
                            B=torch.cat([weight.B, zeros_b])), bias
    return torch.cat([weight, policy.weight.detach().expand(k, -1, -1)]), bias       # (N + k, 2, 4)


# ---- gradient-estimate quality against rank -----------------------------------------------------------
@dataclass(frozen=True)
class ESRankSweepConfig:
    """Config of ``es_rank_sweep``."""

    ranks: tuple[int, ...] = (1, 2, 4, 8, 16)  # EGGROLL ranks to compare
    population: int = 64  # members per estimate
    sigma: float = 0.05  # noise scale
    repeats: int = 4  # independent estimates per method
    hidden: int = 32  # hidden units of the regression MLP
    seed: int = 0  # seed of the task and the noise
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_rank_sweep(result: History):
    """Cosine, relative variance and wall time against rank; full-rank ES as a dashed line."""
    import plotly.graph_objects as go
    from lab.viz.figures import make_subplots

    metrics = ("cosine", "rel_variance", "wall_time")
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.09, subplot_titles=[
        "cosine with backprop gradient", "relative variance", "seconds per estimate"])
    es = result.artifacts.get("es", {})
    for col, metric in enumerate(metrics, start=1):
        ranks, values = result.series(metric)
        fig.add_trace(go.Scatter(x=ranks, y=values, mode="lines+markers", name="EGGROLL",
                                 showlegend=col == 1, line=dict(color="#d62728")), row=1, col=col)
        if metric in es:
            fig.add_trace(go.Scatter(x=[ranks.min(), ranks.max()], y=[es[metric]] * 2, mode="lines",
                                     name="full-rank ES", showlegend=col == 1,
                                     line=dict(color="#1f77b4", dash="dash")), row=1, col=col)
        fig.update_xaxes(type="log", title_text="rank", row=1, col=col)
        fig.update_yaxes(title_text=("cosine", "relative variance", "seconds")[col - 1], row=1, col=col)
    fig.update_layout(height=340, margin=dict(l=60, r=20, t=50, b=40))
    return fig


def _estimate_stats(opt: ES, fitness, true_grad: torch.Tensor, repeats: int) -> dict[str, float]:
    estimates, times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        directions, _ = opt.estimate(fitness)
        times.append(time.perf_counter() - start)
        estimates.append(torch.cat([d.reshape(-1) for d in directions]).double())
    est = torch.stack(estimates)  # (R, d)
    mean = est.mean(0)
    cos = torch.nn.functional.cosine_similarity(est, -true_grad.expand_as(est), dim=1)
    return {"cosine": cos.mean().item(),
            "rel_variance": ((est - mean) ** 2).sum(1).mean().item() / (mean ** 2).sum().item(),
            "wall_time": float(np.median(times))}


@experiment("es_rank_sweep", ESRankSweepConfig, paper="Evolution Strategies at the Hyperscale",
            arxiv="2511.16652", plot=_plot_rank_sweep,
            smoke={"ranks": (1, 2), "repeats": 2, "population": 8},
            summary="EGGROLL gradient estimates against rank: cosine to backprop, variance, time")
def es_rank_sweep(cfg: ESRankSweepConfig) -> History:
    check_int("repeats", cfg.repeats, minimum=2)
    check_positive("sigma", cfg.sigma)
    if not cfg.ranks:
        raise ValueError("ranks must list at least one rank")
    model, x, y = _regression_task(cfg.hidden, cfg.seed, resolve_device(cfg.device))
    model.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    true_grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
    history = History(meta={"algorithm": "eggroll", "seed": cfg.seed})
    for rank in cfg.ranks:
        opt = EGGROLL(model.parameters(), sigma=cfg.sigma, rank=rank, population=cfg.population,
                      seed=cfg.seed)
        history.append(int(rank), **_estimate_stats(opt, _mse_fitness(model, opt, x, y), true_grad,
                                                    cfg.repeats))
    es = ES(model.parameters(), sigma=cfg.sigma, population=cfg.population, fitness_shaping="zscore",
            seed=cfg.seed)
    history.artifacts["es"] = _estimate_stats(es, _mse_fitness(model, es, x, y), true_grad, cfg.repeats)
    return history


def compare(cfg, optimizers: tuple[str, ...] = ("es", "eggroll", "adam")) -> Runs:
    """Run ``es_regression`` or ``es_cartpole`` (by the config's type) once per optimizer."""
    name = {ESRegressionConfig: "es_regression", ESCartPoleConfig: "es_cartpole"}[type(cfg)]
    return sweep(name, "optimizer", optimizers, cfg)


# ---- the lesson's claims (notebook 05) ----------------------------------------------------------
REGRESSION_CONTROLS = ("population", "sigma", "rank", "steps", "seed")
CARTPOLE_CONTROLS = ("population", "sigma", "rank", "lr", "generations", "seed")
RANK_CONTROLS = ("population", "sigma", "repeats", "seed")
"""The fields notebook 05's panels expose; each claim's config names all of them."""

def _es_learns(runs: Runs) -> bool:
    es, egg, adam = runs["es"]["loss"], runs["eggroll"]["loss"], runs["adam"]["loss"]
    return (es[-1] < es[0] / 5 and egg[-1] < egg[0] / 5 and egg[-1] <= 2 * es[-1]
            and adam[-1] < min(es[-1], egg[-1]) / 5)


def _returns_rise(runs: Runs) -> bool:
    return all(h["reward"][-3:].mean() >= 1.5 * h["reward"][0] for h in runs.values())


def _population_not_rank(history: History) -> bool:
    cosine, es = history["cosine"], history.artifacts["es"]["cosine"]
    return cosine.min() >= 0.14 and es >= 0.14 and abs(cosine[0] - es) <= 0.05


CLAIMS = [
    Claim(
        notebook="05_evolution_strategies", panel="regression", name="no_gradient",
        text="Without a single gradient, ES and EGGROLL (rank-4 perturbations) cut the loss of "
             "fitting the teacher network more than 5x in 60 steps from 32 members per step, "
             "EGGROLL about as far as full-rank ES; backprop (Adam) goes more than 5x further still.",
        experiment="es_regression", seeds=3,
        config=settings(ESRegressionConfig(), REGRESSION_CONTROLS),
        variants={"es": {"optimizer": "es"}, "eggroll": {"optimizer": "eggroll"},
                  "adam": {"optimizer": "adam"}},
        holds=_es_learns,
        control={"population": 4},
        control_text="4 members (two antithetic pairs) per step: the estimate is mostly noise and "
                     "the loss barely moves",
    ),
    Claim(
        notebook="05_evolution_strategies", panel="cartpole", name="returns",
        text="From episode returns alone, ES and EGGROLL improve a linear CartPole policy: the "
             "population's mean return over the last 3 of 10 generations is at least 1.5x the "
             "first generation's.",
        experiment="es_cartpole", seeds=3,
        config=settings(ESCartPoleConfig(), CARTPOLE_CONTROLS),
        variants={"es": {"optimizer": "es"}, "eggroll": {"optimizer": "eggroll"}},
        holds=_returns_rise,
        control={"lr": 1e-4},
        control_text="lr = 1e-4: the same return-based estimates, but steps too small to change "
                     "the policy",
    ),
    Claim(
        notebook="05_evolution_strategies", panel="rank", name="population_not_rank",
        text="What makes one gradient estimate good is the population, not the rank: with 64 "
             "members, EGGROLL's estimate has a cosine of about 0.19 with the backprop gradient at "
             "every rank from 1 to 16, as full-rank ES has.",
        experiment="es_rank_sweep", seeds=3,
        config=settings(ESRankSweepConfig(), RANK_CONTROLS),
        holds=_population_not_rank,
        control={"population": 16},
        control_text="16 members: the cosine falls to about 0.1 at every rank and for ES alike "
                     "(it grows like the square root of the population)",
    ),
]


__all__ = ["ESRegressionConfig", "ESCartPoleConfig", "ESRankSweepConfig", "es_regression",
           "es_cartpole", "es_rank_sweep", "compare", "DEFAULT_LR", "CARTPOLE_LR",
           "REGRESSION_CONTROLS", "CARTPOLE_CONTROLS", "RANK_CONTROLS", "CLAIMS"]
