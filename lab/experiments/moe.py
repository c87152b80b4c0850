"""MoE load-balancing experiments: a router-only stream, the primal-dual view, a tiny MoE LM.

- ``moe_routing_sim``: a linear top-k router on a ``toy_envs.routing.RoutingStream`` (skewed,
  drifting affinities). The router is trained by SGD on a task loss ``-mean_t sum_j g_{t,j}
  gamma_{t,S_t[j]}`` (the gate-weighted true affinity of the chosen experts: the stand-in for a
  model's loss) plus the balancer's auxiliary loss; a bias controller is updated after each step.
  Per step: the expert ``load``, ``max_violation``, ``idle_experts``, ``load_entropy``, ``dropped``
  (with a capacity factor), ``gate_distortion`` (against the unbalanced router that follows the
  true affinities), ``loss`` (task) and the controller's ``bias``. Millions of tokens run in seconds.
- ``alf_primal_dual``: loss-free balancing as a primal-dual method (Han & Zhong, arXiv 2512.03915)
  on Gumbel affinities: deterministic (one fixed batch: the ``lagrangian`` and the LP optimum) or
  online (a fresh batch each step: cumulative ``regret`` of the expected dual against its minimizer,
  k = 1), for each step-size schedule.
- ``moe_transformer``: a tiny causal MoE transformer trained on ``TopicMarkovCorpus`` with any
  balancer: language-model ``loss`` against balance.

Balancers are named by registry spec (``"switch_aux"``, ``"aux_free_bias(u=0.01)"``, ``"none"``);
the config fields ``aux_coef``, ``u`` and ``schedule`` fill the balancer's ``coef``, ``u`` and
``schedule`` arguments when it has them (a spec's own value wins), so one slider drives them all.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lab import progress
from lab.checks import check_int, check_positive
from lab.experiments._base import experiment
from lab.history import History, Runs
from lab.moe.layer import capacity_keep, expert_capacity
from lab.moe.metrics import (assignment_lp, dropped_fraction, expert_load, gate_distortion, lagrangian,
                             load_metrics)
from lab.moe.router import TopKRouter, is_controller, select_topk
from lab.moe.transformer import MoETransformer
from lab.registry import get, make, parse_spec
from toy_envs.routing import RoutingStream, TopicMarkovCorpus, gumbel_affinities, gumbel_expected_dual

Schedule = Literal["sign", "linear", "inv_n", "inv_sqrt_n"]  # the step sizes of lab.moe.aux_free.SCHEDULES

BALANCERS = ("none", "switch_aux", "z_loss", "seq_aux", "aux_free_bias", "stochastic_balance")
"""Every choice of the ``balancer`` field, in the order the comparison plots use."""

THEORY = "A Theoretical Framework for Auxiliary-Loss-Free Load Balancing of Sparse Mixture-of-Experts in " \
         "Large-Scale AI Models"


def build_balancer(spec: str, n_experts: int, *, aux_coef: float, u: float, schedule: str) -> Any:
    """The balancer named by ``spec`` with ``coef``/``u``/``schedule`` filled from the config."""
    name, kwargs = parse_spec(spec)
    if name == "none":
        return None
    params = inspect.signature(get("balancer", name)).parameters
    defaults = {"coef": aux_coef, "u": u, "schedule": schedule}
    kwargs = {**{key: value for key, value in defaults.items() if key in params}, **kwargs}
    return make("balancer", name, n_experts, **kwargs)


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoutingSimConfig:
    """Config of ``moe_routing_sim``."""

    balancer: str = "aux_free_bias"  # registry spec or "none"
    n_experts: int = 8  # E
    k: int = 2  # experts per token
    d_model: int = 16  # token width
    skew: float = 2.0  # popularity bump strength of the stream (0 = uniform)
    drift: float = 0.0  # speed of the popular experts around the ring (radians per step)
    noise: float = 0.5  # token spread around its centroid
    batch: int = 512  # tokens per step
    steps: int = 200  # routing steps
    lr: float = 0.5  # SGD learning rate of the router (0 = frozen router)
    aux_coef: float = 0.5  # coef of switch_aux / z_loss / seq_aux (the task gradient here is strong)
    u: float = 2e-3  # bias speed of aux_free_bias
    schedule: Schedule = "sign"  # step-size schedule of aux_free_bias
    capacity_factor: float | None = None  # count drops with capacity C = ceil(CF k T / E)
    init_scale: float = 4.0  # router starts as init_scale * centroids (it follows the affinities)
    seed: int = 0  # seed of the stream and the token draws


def _plot_sim(history: History):
    from lab.viz.moe import load_heatmap

    return load_heatmap(history)


@experiment("moe_routing_sim", RoutingSimConfig, paper=THEORY, arxiv="2512.03915", plot=_plot_sim,
            summary="Router-only simulation of a balancer on a skewed, drifting token stream")
def moe_routing_sim(cfg: RoutingSimConfig) -> History:
    check_int("steps", cfg.steps, minimum=1)
    check_int("batch", cfg.batch, minimum=1)
    check_positive("lr", cfg.lr, allow_zero=True)
    stream = RoutingStream(cfg.n_experts, cfg.d_model, skew=cfg.skew, drift=cfg.drift, noise=cfg.noise,
                           seed=cfg.seed)
    balancer = build_balancer(cfg.balancer, cfg.n_experts, aux_coef=cfg.aux_coef, u=cfg.u,
                              schedule=cfg.schedule)
    router = TopKRouter(cfg.d_model, cfg.n_experts, cfg.k, balancer)
    with torch.no_grad():
        router.gate.weight.copy_(cfg.init_scale * stream.centroids)
    opt = torch.optim.SGD(router.parameters(), lr=cfg.lr) if cfg.lr > 0 else None
    gen = torch.Generator().manual_seed(cfg.seed)
    history = History(meta={"algorithm": cfg.balancer, "seed": cfg.seed})
    for step in progress.steps(cfg.steps, desc=cfg.balancer, history=history):
        x, _ = stream.sample(cfg.batch, step, gen)  # (T, d)
        gamma = stream.affinity(x)  # (T, E)
        out = router(x)
        # task loss: -mean_t sum_j g_{t,j} gamma_{t, S_t[j]}
        task = -(out.gates * gamma.gather(-1, out.indices)).sum(-1).mean()
        if opt is not None:
            opt.zero_grad()
            (task + out.aux_loss).backward()
            opt.step()
        row = load_metrics(out.load)
        # reference: the unbalanced router that follows the true affinities (the initial router)
        ref_idx, ref_gates = select_topk((cfg.init_scale * gamma).softmax(-1), cfg.k)
        row["gate_distortion"] = gate_distortion(out.indices, out.gates, ref_idx, ref_gates, cfg.n_experts)
        if cfg.capacity_factor is not None:
            cap = expert_capacity(cfg.batch, cfg.n_experts, cfg.k, cfg.capacity_factor)
            row["dropped"] = dropped_fraction(~capacity_keep(out.indices, cfg.n_experts, cap))
        if is_controller(balancer):
            row["bias"] = balancer.update(out.load)["bias"]
        history.append(step, loss=task.item(), aux_loss=out.aux_loss.item(), load=out.load, **row)
    history.artifacts["popularity_final"] = stream.popularity(cfg.steps - 1).tolist()
    return history


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrimalDualConfig:
    """Config of ``alf_primal_dual``."""

    mode: Literal["deterministic", "online"] = "online"  # one fixed batch, or fresh tokens each step
    schedule: Schedule = "inv_n"  # step-size schedule of the dual (bias) update
    u: float = 1.0  # speed u of the schedule
    n_experts: int = 8  # E
    k: int = 1  # experts per token (online regret needs k = 1)
    tokens: int = 64  # T, tokens per batch
    skew: float = 1.0  # amplitude of the mean affinities mu_i = skew * cos(2 pi i / E)
    drift: float = 0.0  # online only: speed at which mu rotates (radians per step)
    steps: int = 400  # primal-dual iterations
    lp_oracle: bool = False  # deterministic only: solve the balanced-assignment LP (scipy)
    seed: int = 0  # seed of the Gumbel affinities


def _plot_pd(history: History):
    from lab.viz.moe import primal_dual_figure

    return primal_dual_figure(history)


@experiment("alf_primal_dual", PrimalDualConfig, paper=THEORY, arxiv="2512.03915", plot=_plot_pd,
            summary="ALF-LB as a primal-dual method: Lagrangian, violation, regret per step-size schedule")
def alf_primal_dual(cfg: PrimalDualConfig) -> History:
    from lab.moe.aux_free import AuxFreeBias

    check_int("steps", cfg.steps, minimum=1)
    if cfg.mode not in ("deterministic", "online"):
        raise ValueError(f"mode must be 'deterministic' or 'online', got {cfg.mode!r}")
    e, k, t = cfg.n_experts, cfg.k, cfg.tokens
    gen = torch.Generator().manual_seed(cfg.seed)
    angles = 2 * math.pi * torch.arange(e, dtype=torch.float64) / e
    controller = AuxFreeBias(e, u=cfg.u, schedule=cfg.schedule)
    fixed = gumbel_affinities(cfg.skew * torch.cos(angles), t, gen) if cfg.mode == "deterministic" else None
    history = History(meta={"algorithm": f"aux_free_bias({cfg.schedule})", "seed": cfg.seed})
    regret = 0.0
    for step in progress.steps(cfg.steps, desc=cfg.schedule, history=history):
        mu = cfg.skew * torch.cos(angles - cfg.drift * step)  # (E,)
        gamma = fixed if fixed is not None else gumbel_affinities(mu, t, gen)  # (T, E)
        row: dict[str, Any] = {"bias": controller.bias.clone()}
        if fixed is not None:
            row["lagrangian"] = lagrangian(gamma, controller.bias, k)
        elif k == 1:
            # expected regret of this step against the expected dual's minimizer p* = -mu
            regret += gumbel_expected_dual(controller.bias, mu, t) - gumbel_expected_dual(-mu, mu, t)
            row["regret"] = regret
        # primal: x = TopK(gamma + p);  dual: p += eps (L - A)
        idx = (gamma + controller.bias).topk(k, dim=-1).indices  # (T, k)
        load = expert_load(idx, e)
        row["overloaded"] = int((load > load.mean()).sum())
        controller.update(load)
        history.append(step, load=load, **load_metrics(load), **row)
    if fixed is not None:
        history.artifacts["lagrangian_final"] = lagrangian(fixed, controller.bias, k)
        if cfg.lp_oracle:
            history.artifacts["lp_optimum"] = assignment_lp(fixed, k)
    return history


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MoETransformerConfig:
    """Config of ``moe_transformer``."""

    balancer: str = "aux_free_bias"  # registry spec or "none"
    n_experts: int = 8  # experts per layer
    k: int = 2  # experts per token
    d_model: int = 32  # model width
    n_layers: int = 2  # MoE blocks
    n_heads: int = 2  # attention heads
    vocab: int = 32  # vocabulary of the toy language
    n_topics: int = 8  # topics (bigram chains) of the toy language
    skew: float = 1.0  # Zipf exponent of the topic frequencies
    drift: float = 0.0  # speed at which the topic ranking rotates (ranks per step)
    seq_len: int = 24  # tokens per sequence
    batch: int = 16  # sequences per step
    steps: int = 60  # optimizer steps
    lr: float = 3e-3  # AdamW learning rate
    aux_coef: float = 1e-2  # coef of switch_aux / z_loss / seq_aux
    u: float = 1e-3  # bias speed of aux_free_bias
    schedule: Schedule = "sign"  # step-size schedule of aux_free_bias
    capacity_factor: float | None = None  # None = no token dropping
    seed: int = 0  # seed of the model, the corpus and the batches


def _plot_lm(history: History):
    from lab.viz.moe import load_heatmap

    return load_heatmap(history)


@experiment("moe_transformer", MoETransformerConfig, paper=THEORY, arxiv="2512.03915", plot=_plot_lm,
            summary="Tiny MoE transformer LM with a balancer: language-model loss against balance")
def moe_transformer(cfg: MoETransformerConfig) -> History:
    check_int("steps", cfg.steps, minimum=1)
    check_positive("lr", cfg.lr)
    torch_gen = torch.Generator().manual_seed(cfg.seed)
    corpus = TopicMarkovCorpus(cfg.vocab, cfg.n_topics, skew=cfg.skew, drift=cfg.drift, seed=cfg.seed)
    model = MoETransformer(cfg.vocab, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_experts, cfg.k,
                           max_len=cfg.seq_len,
                           make_balancer=lambda i: build_balancer(cfg.balancer, cfg.n_experts,
                                                                  aux_coef=cfg.aux_coef, u=cfg.u,
                                                                  schedule=cfg.schedule),
                           capacity_factor=cfg.capacity_factor, generator=torch_gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    history = History(meta={"algorithm": cfg.balancer, "seed": cfg.seed,
                             "entropy_rate": corpus.entropy_rate()})
    for step in progress.steps(cfg.steps, desc=cfg.balancer, history=history):
        tokens, _ = corpus.sample(cfg.batch, cfg.seq_len + 1, step, torch_gen)
        logits, routes = model(tokens[:, :-1])
        lm = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab), tokens[:, 1:].reshape(-1))
        aux = model.aux_loss(routes)
        opt.zero_grad()
        (lm + aux).backward()
        opt.step()
        stats = model.update_balancers(routes)
        loads = torch.stack([r.load for r in routes])  # (layers, E)
        dist = []
        for r in routes:  # the change the selection bias makes at this step
            ref_idx, ref_gates = select_topk(r.scores, cfg.k)
            dist.append(gate_distortion(r.indices, r.gates, ref_idx, ref_gates, cfg.n_experts))
        per_layer = [load_metrics(a) for a in loads]  # averaged over the layers
        row: dict[str, Any] = {key: sum(m[key] for m in per_layer) / len(per_layer) for key in per_layer[0]}
        row["dropped"] = sum(dropped_fraction(r.dropped) for r in routes) / len(routes)
        row["gate_distortion"] = sum(dist) / len(dist)
        if stats:
            row["bias"] = stats[0]["bias"]
        history.append(step, loss=lm.item(), aux_loss=aux.item(), load=loads[0], **row)
    return history


# ----------------------------------------------------------------------------------------------
def compare_balancers(name: str, cfg: Any, balancers: tuple[str, ...] = BALANCERS) -> Runs:
    """Run experiment ``name`` once per balancer (same config otherwise); labelled Runs."""
    from lab.experiments._base import replace, run

    return Runs({b: run(name, replace(cfg, balancer=b)) for b in balancers})


__all__ = ["BALANCERS", "MoETransformerConfig", "PrimalDualConfig", "RoutingSimConfig", "alf_primal_dual",
           "build_balancer", "compare_balancers", "moe_routing_sim", "moe_transformer"]
