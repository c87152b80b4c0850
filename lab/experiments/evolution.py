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
  and the ``reward`` of the current (unperturbed) policy as ``eval_reward``.
- ``es_rank_sweep``: at fixed weights of the regression MLP, repeated gradient estimates of
  EGGROLL for each rank and of full-rank ES (same z-score shaping): cosine with the backprop
  gradient, relative variance ``E||g - mean g||^2 / ||mean g||^2`` and wall time per estimate.
  Scale-free measures, because EGGROLL's update is sigma*sqrt(N) times ES's.

``lr = None`` picks a learning rate that works for the method on this task (``DEFAULT_LR``).
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
from lab.experiments._base import experiment, sweep
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
    """``MLP(in, (hidden,), out)`` with torch's default init drawn from ``g``."""
    model = MLP(sizes[0], (sizes[1],), sizes[2], activation="tanh")
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=g)
                layer.bias.uniform_(-bound, bound, generator=g)
    return model


def _regression_task(hidden: int, seed: int):
    """(model, x (128, 16), y (128, 8)): a student MLP and a random teacher's outputs."""
    g = torch.Generator().manual_seed(seed)
    teacher = _seeded_mlp((16, hidden, 8), g)
    x = torch.randn(128, 16, generator=g)
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
    steps: int = 150  # optimizer steps
    hidden: int = 32  # hidden units of student and teacher
    seed: int = 0  # seed of teacher, data, student init and noise


def _plot_regression(result):
    from lab.viz.figures import curves

    return curves(result, ["loss"], log_y=True)


@experiment("es_regression", ESRegressionConfig, paper="Evolution Strategies at the Hyperscale",
            arxiv="2511.16652", plot=_plot_regression,
            summary="ES vs EGGROLL vs backprop fitting a teacher MLP")
def es_regression(cfg: ESRegressionConfig) -> History:
    check_int("steps", cfg.steps, minimum=1)
    model, x, y = _regression_task(cfg.hidden, cfg.seed)
    opt = make_optimizer(cfg.optimizer, list(model.parameters()), _lr(cfg.optimizer, cfg.lr, DEFAULT_LR),
                         {"population": cfg.population, "sigma": cfg.sigma, "rank": cfg.rank,
                          "seed": cfg.seed})
    fitness = _mse_fitness(model, opt, x, y) if _gradient_free(opt) else None
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    elapsed = 0.0
    for step in progress.steps(cfg.steps + 1, desc=cfg.optimizer, history=history):
        with torch.no_grad():
            history.append(step, loss=((model(x) - y) ** 2).mean().item(), wall_time=elapsed)
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
    generations: int = 15  # optimizer steps
    max_steps: int = 200  # episode length cap
    seed: int = 0  # seed of the policy init, the noise and the environments


def _plot_cartpole(result):
    from lab.viz.figures import curves

    return curves(result, ["reward", "eval_reward"])


def _policy_logits(obs: torch.Tensor, weight, bias: torch.Tensor) -> torch.Tensor:
    """Logits of every member's linear policy: obs (N, 4) -> (N, 2)."""
    if isinstance(weight, LowRankBatch):
        return weight.matmul(obs.unsqueeze(1)).squeeze(1) + bias  # obs W^T + (obs B_i) A_i^T
    return torch.einsum("ni,noi->no", obs, weight) + bias


def _episode_returns(weight, bias: torch.Tensor, n: int, max_steps: int, seed: int) -> torch.Tensor:
    """Return of one CartPole episode per member (vectorized env, no autoreset counted)."""
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    env = CartPoleVectorEnv(num_envs=n, max_episode_steps=max_steps)
    obs, _ = env.reset(seed=seed)
    returns = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    for _ in range(max_steps):
        logits = _policy_logits(torch.as_tensor(obs, dtype=torch.float32), weight, bias)
        obs, reward, terminated, truncated, _ = env.step(logits.argmax(-1).numpy())
        returns += reward * alive
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
    env.close()
    return torch.as_tensor(returns)


@experiment("es_cartpole", ESCartPoleConfig, paper="Evolution Strategies at the Hyperscale",
            arxiv="2511.16652", plot=_plot_cartpole,
            summary="ES vs EGGROLL training a linear CartPole policy")
def es_cartpole(cfg: ESCartPoleConfig) -> History:
    check_int("generations", cfg.generations, minimum=1)
    check_int("max_steps", cfg.max_steps, minimum=1)
    g = torch.Generator().manual_seed(cfg.seed)
    policy = nn.Linear(4, 2)
    with torch.no_grad():
        policy.weight.normal_(0.0, 0.1, generator=g)
        policy.bias.zero_()
    opt = make_optimizer(cfg.optimizer, list(policy.parameters()), _lr(cfg.optimizer, cfg.lr, CARTPOLE_LR),
                         {"population": cfg.population, "sigma": cfg.sigma, "rank": cfg.rank,
                          "seed": cfg.seed})
    if not _gradient_free(opt):
        raise ValueError(f"optimizer must be gradient-free (es, eggroll) for CartPole, got {cfg.optimizer!r}")
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    for gen in progress.steps(cfg.generations, desc=cfg.optimizer, history=history):
        env_seed = cfg.seed * 100_003 + gen

        def fitness(batch):  # batch = [weight (N, 2, 4) or LowRankBatch, bias (N, 2)]
            return _episode_returns(batch[0], batch[1], cfg.population, cfg.max_steps, env_seed)

        rewards = opt.step(fitness)
        with torch.no_grad():
            current = _episode_returns(policy.weight.expand(8, 2, 4), policy.bias, 8, cfg.max_steps,
                                       env_seed + 7)
        history.append(gen, reward=rewards.mean().item(), eval_reward=current.mean().item())
    return history


# ---- gradient-estimate quality against rank -----------------------------------------------------------
@dataclass(frozen=True)
class ESRankSweepConfig:
    """Config of ``es_rank_sweep``."""

    ranks: tuple[int, ...] = (1, 2, 4, 8, 16)  # EGGROLL ranks to compare
    population: int = 64  # members per estimate
    sigma: float = 0.05  # noise scale
    repeats: int = 8  # independent estimates per method
    hidden: int = 32  # hidden units of the regression MLP
    seed: int = 0  # seed of the task and the noise


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
            summary="EGGROLL gradient estimates against rank: cosine to backprop, variance, time")
def es_rank_sweep(cfg: ESRankSweepConfig) -> History:
    check_int("repeats", cfg.repeats, minimum=2)
    check_positive("sigma", cfg.sigma)
    if not cfg.ranks:
        raise ValueError("ranks must list at least one rank")
    model, x, y = _regression_task(cfg.hidden, cfg.seed)
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


__all__ = ["ESRegressionConfig", "ESCartPoleConfig", "ESRankSweepConfig", "es_regression",
           "es_cartpole", "es_rank_sweep", "compare", "DEFAULT_LR", "CARTPOLE_LR"]
