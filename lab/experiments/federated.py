"""Experiment ``federated``: one aggregator on a federated problem under a participation model.

The config builds a problem from ``toy_envs.federated`` (least squares with a known optimum by
default), data-correlated participation rates p_i (``p_mean``, ``p_spread``; unknown to the
algorithm), a participation model, optional faults (link noise, stragglers with a deadline,
drop-outs, corrupted uploads), and runs :func:`lab.federated.simulate`. :func:`compare` runs
several algorithms on the same draw (a panel callable returning ``Runs``).

Data heterogeneity is one knob, ``alpha``: the Dirichlet concentration of the label split for the
classification problems; for least squares the spread of the client optima is
``heterogeneity = 1 / sqrt(alpha)`` (alpha -> inf: every client has the same optimum).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

import numpy as np

from lab.checks import check_int, check_nonneg, check_positive
from lab.claims import Claim
from lab.experiments._base import experiment, replace, resolve_device
from lab.federated import Faults, heterogeneous_rates, make_participation, simulate
from lab.history import History, Runs
from lab.registry import make, parse_spec
from toy_envs.federated import FederatedProblem, digits_mlp, least_squares, logistic_regression


@dataclass(frozen=True)
class FederatedConfig:
    """Config of ``federated``."""

    algorithm: str = "fedau"  # aggregator registry spec, e.g. "fedstale(beta=0.5)"
    problem: Literal["least_squares", "logistic_regression", "digits_mlp"] = "least_squares"  # client problem
    num_clients: int = 20  # N
    alpha: float = 0.3  # data heterogeneity: Dirichlet alpha (classification) / 1/heterogeneity^2 (least squares)
    participation: str = "bernoulli"  # participation spec: bernoulli, markov(q=0.05), cyclic(period=100), uniform
    p_mean: float = 0.3  # typical participation probability
    p_spread: float = 1.0  # spread of the data-correlated rates p_i (0 = all equal)
    rounds: int = 80  # communication rounds R
    local_steps: int = 5  # local steps K per round
    lr: float = 0.01  # local learning rate eta_l (larger: faster, but FedAU's gain drowns in round-to-round noise)
    batch_size: int | None = None  # local minibatch (None = full local batch)
    noise: float = 0.0  # std of additive Gaussian noise on the uplink and downlink
    staleness: float = 0.0  # mean straggler delay in rounds (> 0 switches to the stragglers model)
    slow_data: bool = True  # stragglers are the clients holding the upper half of the labels (slowness tied to data)
    deadline: int = 3  # rounds a late upload may still be aggregated
    drop_prob: float = 0.0  # chance a participant drops mid-round
    corrupt_prob: float = 0.0  # chance an upload arrives as NaN/Inf
    seed: int = 0  # seeds problem, rates, participation, minibatches and faults
    device: str = "auto"  # "auto" = CUDA when available, else CPU


@dataclass(frozen=True)
class CompareConfig(FederatedConfig):
    """Config of :func:`compare`: the ``federated`` config plus the algorithms to run side by side."""

    algorithms: tuple[str, ...] = ("fedavg", "fedau", "scaffold", "fedvarp")  # aggregator specs


@lru_cache(maxsize=8)
def build_problem(problem: str, num_clients: int, alpha: float, seed: int, device: str = "cpu") -> FederatedProblem:
    """The problem of a config on ``device`` (cached: the same draw for every algorithm and slider
    move; drawn on the CPU, then moved, so every device sees the same data)."""
    check_int("num_clients", num_clients, minimum=2)
    check_positive("alpha", alpha)
    if problem == "least_squares":
        built = least_squares(num_clients=num_clients, heterogeneity=alpha**-0.5, seed=seed)
    elif problem == "logistic_regression":
        built = logistic_regression(num_clients=num_clients, alpha=alpha, seed=seed)
    elif problem == "digits_mlp":
        built = digits_mlp(num_clients=num_clients, alpha=alpha, seed=seed)
    else:
        raise ValueError(f"problem must be least_squares, logistic_regression or digits_mlp, got {problem!r}")
    return built if torch.device(device).type == "cpu" else built.to(device)


def rates_of(cfg: FederatedConfig, problem: FederatedProblem) -> torch.Tensor:
    """The true participation rates p_i of a config (data-correlated, drawn from the seed)."""
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 7919)
    return heterogeneous_rates(problem.label_dist, cfg.p_mean, cfg.p_spread, generator=g)


def slowness_of(cfg: FederatedConfig, problem: FederatedProblem) -> torch.Tensor:
    """Mean delay per client: ``2 * staleness`` for clients whose data lies mostly in the upper half
    of the labels (or groups) and 0 for the rest when ``slow_data``; ``staleness`` for all otherwise."""
    if not cfg.slow_data:
        return torch.full((problem.num_clients,), cfg.staleness, dtype=torch.float64, device="cpu")
    labels = problem.label_dist.shape[1]
    upper = problem.label_dist[:, labels // 2:].sum(1) > 0.5  # (N,) bool
    return 2.0 * cfg.staleness * upper.to(torch.float64)


def _plot(history: History):
    from lab.viz.federated import dashboard

    return dashboard(Runs({history.meta.get("algorithm", "run"): history}))


def components(cfg: FederatedConfig):
    """``(problem, algorithm, participation, faults)`` of a config: what :func:`federated` runs, and
    what ``lab.federated.flower``'s ServerApp runs with Flower clients (same specs, same seeds)."""
    check_nonneg("noise", cfg.noise)
    check_nonneg("staleness", cfg.staleness)
    device = str(resolve_device(cfg.device))
    problem = build_problem(cfg.problem, cfg.num_clients, cfg.alpha, cfg.seed, device)
    rates = rates_of(cfg, problem)
    if cfg.staleness > 0:
        participation = make("participation", "stragglers", rates, slowness=slowness_of(cfg, problem))
    else:
        participation = make_participation(cfg.participation, rates)
    algorithm = make("aggregator", algorithm_spec(cfg))
    faults = Faults(drop_prob=cfg.drop_prob, corrupt_prob=cfg.corrupt_prob, deadline=cfg.deadline,
                    uplink_noise=cfg.noise, downlink_noise=cfg.noise)
    return problem, algorithm, participation, faults


def algorithm_spec(cfg: FederatedConfig) -> str:
    """The aggregator spec of a config, with ``batch_size`` added unless the spec sets it."""
    name, kwargs = parse_spec(cfg.algorithm)
    if cfg.batch_size is not None and "batch_size" not in kwargs:
        kwargs["batch_size"] = cfg.batch_size
    if not kwargs:
        return name
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


@experiment("federated", FederatedConfig, paper="A Lightweight Method for Tackling Unknown Participation "
            "Statistics in Federated Averaging", arxiv="2306.03401", plot=_plot,
            summary="One aggregator on a federated problem: loss, distance to x*, weights, participation",
            smoke={"rounds": 3, "num_clients": 4})
def federated(cfg: FederatedConfig) -> History:
    problem, algorithm, participation, faults = components(cfg)
    history = simulate(problem, algorithm, participation, cfg.rounds, cfg.local_steps, cfg.lr, cfg.seed,
                       faults=faults)
    history.meta["algorithm"] = cfg.algorithm
    return history


def compare(cfg: CompareConfig) -> Runs:
    """``federated`` once per algorithm of ``cfg.algorithms``, on the same problem and participation draw."""
    if not cfg.algorithms:
        raise ValueError("algorithms must name at least one aggregator")
    base = FederatedConfig(**{k: getattr(cfg, k) for k in FederatedConfig.__dataclass_fields__})
    return Runs({name: federated(replace(base, algorithm=name)) for name in cfg.algorithms})


# ---- the lesson's panels and their claims (notebook 08) -------------------------------------------
def _share_spread(h: History) -> float:
    """Mean share of the aggregate of the most frequent quarter of clients over the rarest quarter's."""
    p = np.asarray(h.artifacts["probabilities"])
    share = np.asarray(h.artifacts["effective_weight"])
    order = np.argsort(p)
    q = max(1, len(p) // 4)
    return float(share[order[-q:]].mean() / max(share[order[:q]].mean(), 1e-12))


def _tail_distance(h: History, last: int = 20) -> float:
    return float(np.nanmean(h["distance"][-last:]))


PARTICIPATION_PANEL = CompareConfig(algorithms=("fedavg", "fedau"))
"""Panel "participation": FedAvg and FedAU on the same draw, data-correlated participation."""

DRIFT_PANEL = CompareConfig(algorithms=("fedavg", "scaffold", "fedavg_m(beta=0.1)"), p_mean=1.0, p_spread=0.0,
                            local_steps=20, lr=0.05, rounds=40)
"""Panel "drift": every client every round (no participation bias), many local steps on non-IID data."""

CLAIMS = [
    Claim(notebook="08_federated", panel="participation", experiment=compare, base=PARTICIPATION_PANEL,
          text="Clients that show up often dominate FedAvg: the most frequent quarter of the clients gets several "
               "times the rarest quarter's share of the aggregate, and FedAvg settles far from x*. FedAU's learned "
               "weights ~1/p_i flatten the shares (at most half FedAvg's ratio) and it ends at least 2x closer to x*.",
          holds=lambda runs: (_share_spread(runs["fedau"]) < 0.5 * _share_spread(runs["fedavg"])
                              and _tail_distance(runs["fedau"]) < 0.5 * _tail_distance(runs["fedavg"])),
          control={"p_spread": 0.0},
          control_text="p_spread = 0: every client joins with the same probability, so there is no bias to remove "
                       "and both end at the same distance"),
    Claim(notebook="08_federated", panel="drift", experiment=compare, base=DRIFT_PANEL,
          text="With 20 local steps on non-IID data FedAvg stalls away from x* (client drift), although every "
               "client takes part every round; SCAFFOLD's control variates reach x* (distance < 1/10 of FedAvg's) "
               "and FedAvg-M's momentum cuts the error at least in half.",
          holds=lambda runs: (runs["scaffold"]["distance"][-1] < 0.1 * runs["fedavg"]["distance"][-1]
                              and runs["fedavg_m(beta=0.1)"]["distance"][-1] < 0.5 * runs["fedavg"]["distance"][-1]),
          control={"local_steps": 1},
          control_text="one local step: a local step is a gradient step at the server's model, nothing drifts, and "
                       "SCAFFOLD is exactly FedAvg"),
]

__all__ = ["FederatedConfig", "CompareConfig", "federated", "compare", "build_problem", "rates_of", "slowness_of",
           "components", "algorithm_spec", "CLAIMS", "PARTICIPATION_PANEL", "DRIFT_PANEL"]
