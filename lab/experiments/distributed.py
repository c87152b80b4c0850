"""Experiments on Local SGD / DiLoCo, EDiT and A-EDiT with K simulated workers.

``distributed_training`` trains one algorithm (a registry spec of kind ``distributed``, e.g.
``"edit(temperature=0.5)"``) on a least-squares problem split over K workers, some of them slow;
``compare_distributed`` runs several algorithms on the same draw (a panel callable returning Runs).
Step-synchronous algorithms sync every H inner steps and wait for the slowest worker; A-EDiT syncs
every H seconds of a fast worker's clock (sync_time = H).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from lab import progress
from lab.checks import check_int, check_positive
from lab.distributed.simulate import Problem, make_problem, train
from lab.experiments._base import experiment, resolve_device
from lab.claims import Claim
from lab.history import History, Runs
from lab.registry import make, parse_spec

EDIT_PAPER = "EDiT: A Local-SGD-Based Efficient Distributed Training Method for Large Language Models"


@dataclass(frozen=True)
class DistributedConfig:
    """Config of ``distributed_training``."""

    algorithm: str = "edit"  # registry spec of kind distributed: local_sgd, edit, a_edit(...)
    workers: int = 8  # K simulated workers
    sync_interval: int = 8  # H inner steps per round (A-EDiT: sync_time = H seconds)
    rounds: int = 30  # communication rounds
    heterogeneity: float = 0.3  # std of the shifts of the workers' optima (0 = IID)
    slow_workers: int = 1  # how many workers are slow
    slow_factor: float = 4.0  # seconds per step of a slow worker (fast workers: 1 s)
    outlier_prob: float = 0.02  # chance per round and worker of a bad shard (labels x20)
    inner: Literal["sgd", "adamw"] = "sgd"  # inner optimizer of every worker
    inner_lr: float = 0.05  # inner learning rate
    outer_lr: float = 0.7  # eta_out of the outer Nesterov step
    outer_momentum: float = 0.9  # mu of the outer step (0 with outer_lr 1 = model averaging)
    ewma_warmup: int = 5  # syncs before EDiT's anomaly detector may flag (atorch: 120)
    dim: int = 10  # parameters of the linear model
    samples: int = 64  # examples per worker
    batch_size: int = 16  # minibatch per inner step
    seed: int = 0  # seed of data, minibatches and outliers
    device: str = "auto"  # "auto" = CUDA when available, else CPU


@dataclass(frozen=True)
class CompareDistributedConfig(DistributedConfig):
    """Config of ``compare_distributed``: the algorithms to run on one draw."""

    algorithms: tuple[str, ...] = ("local_sgd", "edit", "a_edit")  # registry specs


def build(spec: str, cfg: DistributedConfig):
    """The algorithm of ``spec`` with the config's outer step, EDiT's detector warm-up and A-EDiT's
    sync_time = H, unless the spec sets them."""
    name, kwargs = parse_spec(spec)
    defaults = {"outer_lr": cfg.outer_lr, "outer_momentum": cfg.outer_momentum,
                "nesterov": cfg.outer_momentum > 0}
    if name in ("edit", "a_edit"):
        defaults["ewma_warmup"] = cfg.ewma_warmup
    if name == "a_edit":
        defaults["sync_time"] = float(cfg.sync_interval)
    return make("distributed", name, **{**defaults, **kwargs})


def plot(result):
    from lab.viz.distributed import distributed_figure

    return distributed_figure(result)


@experiment("distributed_training", DistributedConfig, paper=EDIT_PAPER, arxiv="2412.07210", plot=plot,
            smoke={"rounds": 2, "workers": 2, "sync_interval": 2})
def distributed_training(cfg: DistributedConfig) -> History:
    """Train K simulated workers with one Local-SGD-family algorithm; loss per communication round."""
    check_int("workers", cfg.workers, minimum=1)
    check_int("slow_workers", cfg.slow_workers, minimum=0)
    check_positive("slow_factor", cfg.slow_factor)
    if cfg.slow_workers > cfg.workers:
        raise ValueError(f"slow_workers must be <= workers ({cfg.workers}), got {cfg.slow_workers}")
    dev = resolve_device(cfg.device)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)  # data drawn on the CPU: the same on every device
    cpu = make_problem(cfg.workers, cfg.dim, cfg.samples, cfg.heterogeneity, generator=g)
    problem = Problem(cpu.X.to(dev), cpu.y.to(dev), cpu.w_opt.to(dev))
    step_times = torch.ones(cfg.workers, device="cpu")
    step_times[cfg.workers - cfg.slow_workers:] = cfg.slow_factor
    history = train(problem, build(cfg.algorithm, cfg), rounds=cfg.rounds, sync_interval=cfg.sync_interval,
                    inner=cfg.inner, inner_lr=cfg.inner_lr, batch_size=cfg.batch_size, step_times=step_times,
                    outlier_prob=cfg.outlier_prob, generator=torch.Generator(device="cpu").manual_seed(cfg.seed + 1))
    history.meta["algorithm"] = cfg.algorithm
    history.artifacts["optimum_loss"] = problem.loss(problem.w_opt)
    return history


def compare_distributed(cfg: CompareDistributedConfig) -> Runs:
    """``distributed_training`` for every algorithm of ``cfg.algorithms`` on the same draw."""
    runs = Runs()
    for spec in progress.track(cfg.algorithms, desc="algorithms"):
        runs[spec] = distributed_training(replace(cfg, algorithm=spec))
    return runs


# ---- simulated vs real processes (notebook 16) ------------------------------------------------
REAL_RUNS = "16_real_vs_simulated.json"
"""File name (in ``notebooks/data``) of the real multi-process runs the notebook shows by default."""


def real_vs_simulated(cfg: CompareDistributedConfig, *, timeout: float = 300.0) -> Runs:
    """Each algorithm of ``cfg`` twice: the one-process simulation and ``cfg.workers`` real
    processes (``torch.distributed``, gloo on localhost, :mod:`lab.distributed.wrappers`), on the
    same seeds. Labels ``"simulated: <spec>"`` and ``"<K> processes: <spec>"``."""
    from lab.distributed.train import spawn

    configs = [replace(cfg, algorithm=spec) for spec in cfg.algorithms]
    out = spawn(_real_worker, cfg.workers, configs, timeout=timeout)
    runs = Runs()
    for i, one in enumerate(configs):
        runs[f"simulated: {one.algorithm}"] = distributed_training(one)
        real = History.from_dict(out[0][i])
        real.meta["config"] = {k: v for k, v in one.__dict__.items()}
        runs[f"{cfg.workers} processes: {one.algorithm}"] = real
    return runs


def _real_worker(rank, world, configs):
    return [least_squares_worker(rank, world, c) for c in configs]


# ---- the same run on real processes (torch.distributed) --------------------------------------
def least_squares_worker(rank: int, world: int, cfg: Any, *, corrupt: dict[int, Any] | None = None) -> dict:
    """Rank ``rank`` of ``world`` runs ``cfg`` (a ``DistributedConfig``) the way the one-process
    simulation runs its worker ``rank``, with :mod:`lab.distributed.wrappers` around an
    ``nn.Linear`` and a torch inner optimizer; returns the History (as a dict) on every rank.

    It draws every worker's minibatches and outliers from the simulation's one stream and keeps
    its own row, so the data match; A-EDiT runs on a simulated clock (each step of worker k takes
    t_k seconds), so its step counts are the simulation's. Every worker must take at least one
    step per round.

    ``corrupt``: {rank: rounds} -- that worker's labels are scaled x20 in those rounds (a bad
    shard), on top of the config's random outliers.
    """
    from lab.distributed.simulate import batch_loss
    from lab.distributed.wrappers import AEDiT, EDiT, LocalSGD

    import torch

    if cfg.workers != world:
        raise ValueError(f"cfg.workers ({cfg.workers}) must equal the number of processes ({world})")
    g = torch.Generator().manual_seed(cfg.seed)
    problem = make_problem(cfg.workers, cfg.dim, cfg.samples, cfg.heterogeneity, generator=g)
    K, n, d = problem.X.shape
    step_times = torch.ones(K, dtype=torch.float64)
    step_times[K - cfg.slow_workers:] = cfg.slow_factor
    rule = build(cfg.algorithm, cfg)  # the simulation's algorithm object: its settings
    name, _ = parse_spec(cfg.algorithm)
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    if cfg.inner == "sgd":
        inner = torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)
    else:
        inner = torch.optim.AdamW(model.parameters(), lr=cfg.inner_lr, weight_decay=0.0)
    common = dict(outer_lr=rule.outer.lr, outer_momentum=rule.outer.momentum, nesterov=rule.outer.nesterov)
    clock = [0.0]
    if name == "local_sgd":
        outer = LocalSGD(model, inner, sync_every=cfg.sync_interval, **common)
        steps = torch.full((K,), cfg.sync_interval)
    else:
        edit_args = dict(temperature=rule.temperature, clip=rule.clip, skip_anomaly=rule.skip_anomaly,
                         ewma_alpha=rule.ewma["alpha"], ewma_warmup=rule.ewma["warmup"],
                         ewma_threshold=rule.ewma["threshold"], **common)
        if name == "a_edit":
            outer = AEDiT(model, inner, sync_time=rule.sync_time, step_weight_ratio=rule.step_weight_ratio,
                          clock=lambda: clock[0], **edit_args)
            steps = rule.steps_per_round(step_times)
        else:
            outer = EDiT(model, inner, sync_every=cfg.sync_interval, **edit_args)
            steps = torch.full((K,), cfg.sync_interval)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # the simulation's stream, drawn for all workers
    history = History(meta={"algorithm": cfg.algorithm, "workers": K, "rank": rank, "engine": "torch.distributed"})
    anchor = outer.anchor.to(problem.X.dtype)
    history.append(0, loss=problem.loss(anchor), dist_to_opt=float((anchor - problem.w_opt).norm()))
    for r in range(1, cfg.rounds + 1):
        scale = torch.where(torch.rand(K, generator=gen) < cfg.outlier_prob, 20.0, 1.0)  # (K,)
        if corrupt and r in corrupt.get(rank, ()):
            scale = scale.clone()
            scale[rank] = 20.0
        synced = False
        for s in range(int(steps.max())):
            if cfg.batch_size >= n:
                Xb, yb = problem.X[rank], problem.y[rank] * scale[rank]
            else:
                idx = torch.randint(0, n, (K, cfg.batch_size), generator=gen)  # the same draw as the simulation
                Xb, yb = problem.X[rank][idx[rank]], problem.y[rank][idx[rank]] * scale[rank]
            if s >= int(steps[rank]):
                continue  # this worker is done for the round (A-EDiT: its time window is over)
            inner.zero_grad()
            loss = batch_loss(model.weight[0], Xb, yb)
            loss.backward()
            inner.step()
            clock[0] += float(step_times[rank])
            synced = outer.step()
        if not synced:
            raise RuntimeError(f"rank {rank} did not synchronize in round {r}")
        if name == "a_edit":  # every worker's next window starts at r * sync_time on the simulated clock
            clock[0] = outer.window_start = outer.last_tick = float(r) * rule.sync_time
        anchor = outer.anchor.to(problem.X.dtype)
        history.append(r, loss=problem.loss(anchor), dist_to_opt=float((anchor - problem.w_opt).norm()),
                       **outer.last_stats)
    history.artifacts["anchor"] = outer.anchor.tolist()
    return history.to_dict()


# ---- the lesson's claims (notebook 16, panel "outer") -----------------------------------------
def _mean_loss_after(h: History, start: int = 5) -> float:
    return float(h["loss"][start:].mean())


OUTER_PANEL = CompareDistributedConfig()
"""Notebook 16's first panel: Local SGD, EDiT and A-EDiT on one draw, one slow worker, 2% bad shards."""

CLAIMS = [
    Claim(notebook="16_distributed_solvers_bandits", panel="outer", name="bad_shards", experiment=compare_distributed,
          base=OUTER_PANEL,
          text="A bad shard now and then (2% of worker-rounds) pulls Local SGD's loss up (its mean loss after "
               "round 5 is over 3x EDiT's): EDiT's detector drops the worker whose pseudo-gradient jumps and weights "
               "the rest by their norms.",
          holds=lambda runs: _mean_loss_after(runs["local_sgd"]) > 3 * _mean_loss_after(runs["edit"]),
          control={"outlier_prob": 0.0},
          control_text="no bad shards: all three average the same kind of pseudo-gradients and end at the same loss"),
    Claim(notebook="16_distributed_solvers_bandits", panel="outer", name="slow_worker", experiment=compare_distributed,
          base=OUTER_PANEL, config={"outlier_prob": 0.0},
          text="With one worker 4x slower, EDiT waits for it every round; A-EDiT syncs on time instead and finishes "
               "the same rounds in at most half the (simulated) wall-clock, at a final loss within 10% of EDiT's.",
          holds=lambda runs: (runs["a_edit"]["wall_clock"][-1] < 0.5 * runs["edit"]["wall_clock"][-1]
                              and runs["a_edit"]["loss"][-1] < 1.1 * runs["edit"]["loss"][-1]),
          control={"slow_factor": 1.0},
          control_text="no slow worker: waiting costs nothing, and both take the same time"),
]
