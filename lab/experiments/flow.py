"""Flow matching and diffusion RL on 2-D toys: pretrain a velocity field, fine-tune it to a reward.

Three experiments share one pretrained field (a class-conditional :class:`~lab.models.velocity.
VelocityField` trained by CFM with 20 % label dropout on 8 Gaussians, cached per setting):

- ``flow_pretrain``: CFM, W-CFM or the difficulty curriculum from scratch; per step the ``loss``,
  every ``eval_every`` steps the ``energy`` distance of ODE samples to the data; at the end the
  path ``straightness`` and the samples.
- ``flow_finetune``: one ``flow_loss`` (ddpo, flow_grpo, awm, ac_flow, alignprop, b2_diffurl) moves
  the unconditional field toward a reward on points; per step ``reward``, ``loss``, the method's
  ``kl`` where it has one, and every ``eval_every`` steps ``divergence`` (energy distance of the ODE
  samples to those of the frozen pretrained model), ``target_frac`` and ``modes`` (diversity).
- ``flow_guidance``: CFG vs APG (optionally with DiffIER's per-step correction) on the conditional
  field; per sampler step the ``error`` (jump of the x̂_0 prediction), and as artifacts the samples,
  their mean norm against the mode's (4), the on-mode fraction and the accumulated error.
  Measured with the default field (20 Euler steps): CFG keeps its final samples on the mode up to
  w ≈ 20 but its x̂_0 predictions overshoot on the way (accumulated error 506 at w = 12 vs 9.5 for
  APG with r = 1); at w = 30 CFG samples fly out to ‖x‖ ≈ 27, APG's stay near ‖x‖ ≈ 6. APG's
  negative momentum (β = −0.5) makes things worse on this toy, so the default is β = 0.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from lab import progress
from lab.checks import check_int, check_positive, check_range
from lab.experiments._base import experiment
from lab.flow.ac_flow import Critic, ac_flow_loss, shape_rewards
from lab.flow.alignprop import alignprop_loss
from lab.flow.apg import GuidedVelocity
from lab.flow.awm import awm_loss
from lab.flow.b2_diffurl import b2_diffurl_loss, window_steps
from lab.flow.cfm import cfm_loss, straightness, wcfm_loss
from lab.flow.core import flow_path, rollout, sigmas, transition_logprobs
from lab.flow.curriculum import DifficultyCurriculum
from lab.flow.ddpo import ddpo_advantages, ddpo_loss
from lab.flow.diffier import diffier_sample
from lab.flow.flow_grpo import flow_grpo_advantages, flow_grpo_loss
from lab.history import History
from lab.models.velocity import VelocityField
from toy_envs.flow2d import (energy_distance, make_reward, mode_centers, mode_fractions,
                             modes_covered, sample_target)


# ---------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------
def train_velocity(model: VelocityField, target: str, *, steps: int, batch: int, lr: float,
                   generator: torch.Generator, method: str = "cfm", epsilon: float = 1.0,
                   label_dropout: float = 0.2, curriculum: DifficultyCurriculum | None = None,
                   on_step: Callable[[int, dict], None] | None = None) -> VelocityField:
    """Fit ``model`` to ``target`` by CFM (or W-CFM); conditional models see the class with
    probability ``1 − label_dropout``, else the null class."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in progress.steps(steps, desc=f"pretrain {method}"):
        x0, labels = sample_target(target, batch, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = curriculum.sample_t(batch, generator) if curriculum else torch.rand(batch, generator=generator)
        x_t, _ = flow_path(x0, noise, t)
        cond = None
        if model.n_classes:
            drop = torch.rand(batch, generator=generator) < label_dropout
            cond = torch.where(drop, torch.full_like(labels, model.n_classes), labels)
        v = model(x_t, t, cond)
        loss, metrics = wcfm_loss(v, x0, noise, epsilon=epsilon) if method == "wcfm" else cfm_loss(v, x0, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if curriculum is not None:
            curriculum.update(metrics["loss"])
            metrics["stage"] = curriculum.stage
        if on_step is not None:
            on_step(step, metrics)
    return model


def seeded_field(seed: int, *, hidden: int, n_classes: int = 0) -> VelocityField:
    """A freshly initialised field; the init draws from a forked RNG seeded with ``seed``
    (nn.Linear only reads the default generator; forking leaves the global state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VelocityField(hidden=hidden, n_classes=n_classes)


@functools.lru_cache(maxsize=4)
def _pretrained_state(target: str, steps: int, hidden: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    model = seeded_field(seed, hidden=hidden, n_classes=mode_centers(target).shape[0])
    train_velocity(model, target, steps=steps, batch=256, lr=3e-3, generator=gen)
    return {k: v.clone() for k, v in model.state_dict().items()}


def pretrained_velocity(target: str = "gaussians8", *, steps: int = 500, hidden: int = 64,
                        seed: int = 0) -> VelocityField:
    """A fresh copy of the class-conditional CFM field for ``target`` (trained once per setting)."""
    model = VelocityField(hidden=hidden, n_classes=mode_centers(target).shape[0])
    model.load_state_dict(_pretrained_state(target, steps, hidden, seed))
    return model


def unconditional(model: VelocityField) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """``v(x, t)`` with the null class."""
    return lambda x, t: model(x, t, None)


def ode_samples(model: VelocityField, n: int, n_steps: int, generator: torch.Generator,
                cond: torch.Tensor | None = None) -> torch.Tensor:
    """``(n, 2)`` Euler-ODE samples."""
    noise = torch.randn(n, 2, generator=generator)
    with torch.no_grad():
        return rollout(lambda x, t: model(x, t, cond), noise, sigmas(n_steps)).samples


@dataclass(frozen=True)
class FlowPretrainConfig:
    """Config of ``flow_pretrain``."""

    method: Literal["cfm", "wcfm", "difficulty_curriculum"] = "cfm"  # flow_loss used to pretrain
    target: Literal["gaussians8", "moons"] = "gaussians8"  # 2-D data distribution
    steps: int = 400  # Adam updates
    batch: int = 256  # points per update
    lr: float = 3e-3  # Adam learning rate
    epsilon: float = 1.0  # W-CFM temperature, multiple of the batch median cost
    n_clusters: int = 5  # curriculum: timestep clusters N
    patience: int = 20  # curriculum: plateau patience
    hidden: int = 64  # width of the velocity MLP
    eval_every: int = 100  # steps between energy-distance evaluations
    seed: int = 0  # seed of data, noise and init


def _pretrain_plot(history: History):
    from lab.viz.flow import pretrain_figures

    return pretrain_figures(history)


@experiment("flow_pretrain", FlowPretrainConfig, paper="Flow Matching for Generative Modeling",
            arxiv="2210.02747", plot=_pretrain_plot,
            summary="CFM, W-CFM or the difficulty curriculum fit a 2-D velocity field")
def flow_pretrain(cfg: FlowPretrainConfig) -> History:
    check_int("steps", cfg.steps, minimum=1)
    check_int("batch", cfg.batch, minimum=2)
    check_positive("lr", cfg.lr)
    check_int("eval_every", cfg.eval_every, minimum=1)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = seeded_field(cfg.seed, hidden=cfg.hidden)
    curriculum = (DifficultyCurriculum(n_clusters=cfg.n_clusters, patience=cfg.patience)
                  if cfg.method == "difficulty_curriculum" else None)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    data = sample_target(cfg.target, 256, eval_gen)[0]
    history = History(meta={"algorithm": cfg.method, "seed": cfg.seed})

    def on_step(step: int, metrics: dict) -> None:
        row = {k: metrics[k] for k in ("loss", "stage") if k in metrics}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row["energy"] = energy_distance(ode_samples(model, 256, 20, torch.Generator().manual_seed(7)), data)
        history.append(step, **row)

    train_velocity(model, cfg.target, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, generator=gen,
                   method="wcfm" if cfg.method == "wcfm" else "cfm", epsilon=cfg.epsilon,
                   curriculum=curriculum, on_step=on_step)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(8))
    history.artifacts.update(
        samples=ode_samples(model, 512, 20, torch.Generator().manual_seed(9)).tolist(),
        data=data.tolist(), straightness=straightness(unconditional(model), noise))
    return history


# ---------------------------------------------------------------------------------------------
# Fine-tuning toward a reward
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowFinetuneConfig:
    """Config of ``flow_finetune``."""

    method: Literal["ddpo", "flow_grpo", "awm", "ac_flow", "alignprop", "b2_diffurl"] = "flow_grpo"  # flow_loss
    reward: Literal["dense", "sparse", "linear"] = "dense"  # reward on points (toy_envs.flow2d)
    target_mode: int = 0  # index of the rewarded mode of the 8 Gaussians
    steps: int = 40  # fine-tuning updates
    batch: int = 64  # samples per update
    group_size: int = 8  # GRPO group size G (flow_grpo, awm) / branches M (b2_diffurl)
    lr: float = 1e-3  # Adam learning rate
    n_sample_steps: int = 10  # sampler steps S
    schedule: Literal["flow_grpo", "dance"] = "flow_grpo"  # SDE diffusion schedule
    noise_level: float = 0.7  # a (flow_grpo) or eta (dance)
    beta: float = 0.0  # KL weight to the pretrained model (flow_grpo, awm)
    shared_noise: bool = False  # flow_grpo: one initial noise per group (DanceGRPO)
    clip_range: float = 1e-4  # PPO clip range of the ratio
    alpha: float = 0.1  # AC-Flow W2 regulariser weight
    tau: float = 1.0  # AC-Flow weight temperature
    warmup: int = 5  # AC-Flow critic warm-up updates
    adv_clip: float | None = 2.0  # AC-Flow advantage clip c (None = no clipping)
    backprop_steps: int = 10  # AlignProp: steps that keep gradients (truncation K)
    n_stages: int = 2  # B2-DiffuRL backward stages
    eval_every: int = 10  # steps between divergence / diversity evaluations
    pretrain_steps: int = 500  # CFM steps of the cached pretrained model
    seed: int = 0  # seed of sampling noise


@dataclass
class _Run:
    """What one fine-tuning update needs."""

    cfg: FlowFinetuneConfig
    model: VelocityField
    ref: VelocityField
    opt: torch.optim.Optimizer
    reward_fn: Callable[[torch.Tensor], torch.Tensor]
    grid: torch.Tensor
    gen: torch.Generator
    critic: Critic | None = None
    critic_opt: torch.optim.Optimizer | None = None


def _sde_rollout(run: _Run, noise: torch.Tensor, sde_steps: torch.Tensor | None = None):
    with torch.no_grad():
        return rollout(unconditional(run.model), noise, run.grid, schedule=run.cfg.schedule,
                       noise_level=run.cfg.noise_level, generator=run.gen, sde_steps=sde_steps)


def _ddpo_update(run: _Run, step: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    traj = _sde_rollout(run, torch.randn(run.cfg.batch, 2, generator=run.gen))
    rewards = run.reward_fn(traj.samples)
    logp, _ = transition_logprobs(unconditional(run.model), traj)
    loss, metrics = ddpo_loss(logp, traj.logprobs[:, traj.stochastic], ddpo_advantages(rewards), clip_range=run.cfg.clip_range)
    return loss, metrics, rewards


def _flow_grpo_update(run: _Run, step: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    cfg = run.cfg
    if cfg.shared_noise:   # DanceGRPO: the G samples of a group start from the same noise
        noise = torch.randn(cfg.batch // cfg.group_size, 2, generator=run.gen).repeat_interleave(cfg.group_size, 0)
    else:
        noise = torch.randn(cfg.batch, 2, generator=run.gen)
    traj = _sde_rollout(run, noise)
    rewards = run.reward_fn(traj.samples)
    adv = flow_grpo_advantages(rewards, group_size=run.cfg.group_size)
    logp, means = transition_logprobs(unconditional(run.model), traj)
    with torch.no_grad():
        _, ref_means = transition_logprobs(unconditional(run.ref), traj)
    loss, metrics = flow_grpo_loss(logp, traj.logprobs[:, traj.stochastic], adv, mean=means, ref_mean=ref_means,
                                   std=traj.stds[traj.stochastic], beta=run.cfg.beta,
                                   clip_range=run.cfg.clip_range)
    return loss, metrics, rewards


def _renoise(run: _Run, x0: torch.Tensor):
    noise = torch.randn(x0.shape, generator=run.gen)
    t = torch.rand(x0.shape[0], generator=run.gen).clamp(0.02, 0.98)
    x_t, _ = flow_path(x0, noise, t)
    return noise, t, x_t


def _awm_update(run: _Run, step: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    with torch.no_grad():
        x0 = rollout(unconditional(run.model), torch.randn(run.cfg.batch, 2, generator=run.gen), run.grid).samples
    rewards = run.reward_fn(x0)
    adv = flow_grpo_advantages(rewards, group_size=run.cfg.group_size)
    noise, t, x_t = _renoise(run, x0)
    v = run.model(x_t, t)
    with torch.no_grad():
        v_ref = run.ref(x_t, t)
    loss, metrics = awm_loss(v, v.detach(), x0, noise, adv, v_ref=v_ref, beta=run.cfg.beta,
                             clip_range=run.cfg.clip_range)
    return loss, metrics, rewards


def _ac_flow_update(run: _Run, step: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    with torch.no_grad():
        x0 = rollout(unconditional(run.model), torch.randn(run.cfg.batch, 2, generator=run.gen), run.grid).samples
    rewards = run.reward_fn(x0)
    shaped = shape_rewards(rewards)
    noise, t, x_t = _renoise(run, x0)
    value = run.critic(x_t, t)                                                # (B,)
    critic_loss = ((value - shaped) ** 2).mean()
    run.critic_opt.zero_grad()
    critic_loss.backward()
    run.critic_opt.step()
    adv = shaped if step < run.cfg.warmup else shaped - value.detach()
    v = run.model(x_t, t)
    with torch.no_grad():
        v_ref = run.ref(x_t, t)
    loss, metrics = ac_flow_loss(v, v_ref, x0, noise, adv, tau=run.cfg.tau, alpha=run.cfg.alpha,
                                 adv_clip=run.cfg.adv_clip)
    metrics["critic_loss"] = float(critic_loss.detach())
    return loss, metrics, rewards


def _alignprop_update(run: _Run, step: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    noise = torch.randn(run.cfg.batch, 2, generator=run.gen)
    loss, metrics = alignprop_loss(unconditional(run.model), noise, run.grid, run.reward_fn,
                                   backprop_steps=run.cfg.backprop_steps)
    return loss, metrics, run.reward_fn(metrics.pop("samples"))


def _b2_diffurl_update(run: _Run, step: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    cfg = run.cfg
    stage = 1 + step * cfg.n_stages // cfg.steps
    window = window_steps(stage, cfg.n_sample_steps, cfg.n_stages)
    prefixes = torch.randn(cfg.batch // cfg.group_size, 2, generator=run.gen)
    noise = prefixes.repeat_interleave(cfg.group_size, dim=0)                 # shared prefix per branch set
    branch_ids = torch.arange(prefixes.shape[0]).repeat_interleave(cfg.group_size)
    traj = _sde_rollout(run, noise, sde_steps=window)
    rewards = run.reward_fn(traj.samples)
    logp, _ = transition_logprobs(unconditional(run.model), traj)
    loss, metrics = b2_diffurl_loss(logp, traj.logprobs[:, traj.stochastic], rewards, branch_ids, clip_range=cfg.clip_range)
    metrics["stage"] = stage
    return loss, metrics, rewards


UPDATES = {"ddpo": _ddpo_update, "flow_grpo": _flow_grpo_update, "awm": _awm_update,
           "ac_flow": _ac_flow_update, "alignprop": _alignprop_update, "b2_diffurl": _b2_diffurl_update}


def _finetune_plot(history: History):
    from lab.viz.flow import finetune_figures

    return finetune_figures(history)


@experiment("flow_finetune", FlowFinetuneConfig,
            paper="Flow-GRPO: Training Flow Matching Models via Online RL", arxiv="2505.05470",
            plot=_finetune_plot, summary="Fine-tune a pretrained 2-D flow toward a reward with a flow_loss")
def flow_finetune(cfg: FlowFinetuneConfig) -> History:
    check_int("steps", cfg.steps, minimum=1)
    check_int("group_size", cfg.group_size, minimum=2)
    check_int("batch", cfg.batch, minimum=2)
    if cfg.batch % cfg.group_size:
        raise ValueError(f"batch must be a multiple of group_size={cfg.group_size}, got {cfg.batch}")
    check_positive("lr", cfg.lr)
    check_range("target_mode", check_int("target_mode", cfg.target_mode), 0, 7)
    check_int("eval_every", cfg.eval_every, minimum=1)
    centers = mode_centers("gaussians8")
    center = centers[cfg.target_mode]
    ref = pretrained_velocity(steps=cfg.pretrain_steps).requires_grad_(False)
    model = pretrained_velocity(steps=cfg.pretrain_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    run = _Run(cfg, model, ref, torch.optim.Adam(model.parameters(), lr=cfg.lr),
               make_reward(cfg.reward, center), sigmas(cfg.n_sample_steps), gen)
    if cfg.method == "ac_flow":
        run.critic = Critic()
        run.critic_opt = torch.optim.Adam(run.critic.parameters(), lr=3e-3)
    update = UPDATES[cfg.method]

    def eval_noise_gen() -> torch.Generator:  # the same noise at every evaluation
        return torch.Generator().manual_seed(cfg.seed + 1000)

    before = ode_samples(ref, 512, cfg.n_sample_steps, eval_noise_gen())
    history = History(meta={"algorithm": cfg.method, "seed": cfg.seed, "reward": cfg.reward})

    def evaluate() -> dict:
        after = ode_samples(model, 512, cfg.n_sample_steps, eval_noise_gen())
        return {"divergence": energy_distance(after[:256], before[:256]),
                "target_frac": float(mode_fractions(after, centers)[cfg.target_mode]),
                "modes": modes_covered(after, centers), "ode_reward": float(run.reward_fn(after).mean())}

    history.append(0, **evaluate())
    for step in progress.steps(cfg.steps, desc=cfg.method, history=history):
        loss, metrics, rewards = update(run, step)
        run.opt.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        run.opt.step()
        row = {**metrics, "reward": float(rewards.mean()), "grad_norm": float(grad_norm)}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row.update(evaluate())
        history.append(step + 1, **row)
    history.artifacts.update(
        before=before.tolist(), after=ode_samples(model, 512, cfg.n_sample_steps, eval_noise_gen()).tolist(),
        center=center.tolist())
    return history


# ---------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowGuidanceConfig:
    """Config of ``flow_guidance``."""

    guidance: Literal["cfg", "apg"] = "apg"  # classifier-free or adaptive projected guidance
    guidance_scale: float = 30.0  # w (1 = conditional model alone)
    eta: float = 0.0  # APG weight of the parallel component
    norm_threshold: float = 1.0  # APG rescale radius r (0 = off)
    momentum: float = 0.0  # APG momentum beta (the paper's negative values over-steer on this toy)
    diffier_iterations: int = 0  # DiffIER correction iterations per step (0 = plain Euler)
    diffier_step_size: float = 0.1  # DiffIER gradient step size
    target_class: int = 0  # conditioning mode
    n_sample_steps: int = 20  # Euler steps
    n_samples: int = 256  # points
    pretrain_steps: int = 500  # CFM steps of the cached pretrained model
    seed: int = 0  # seed of the starting noise


def _guidance_plot(history: History):
    from lab.viz.flow import guidance_figures

    return guidance_figures(history)


@experiment("flow_guidance", FlowGuidanceConfig,
            paper="Eliminating Oversaturation and Artifacts of High Guidance Scales in Diffusion Models",
            arxiv="2410.02416", plot=_guidance_plot,
            summary="CFG vs APG (and DiffIER correction) on a class-conditional 2-D flow")
def flow_guidance(cfg: FlowGuidanceConfig) -> History:
    check_range("target_class", check_int("target_class", cfg.target_class), 0, 7)
    check_int("n_samples", cfg.n_samples, minimum=1)
    check_int("n_sample_steps", cfg.n_sample_steps, minimum=1)
    model = pretrained_velocity(steps=cfg.pretrain_steps).requires_grad_(False)
    centers = mode_centers("gaussians8")
    cond = torch.full((cfg.n_samples,), cfg.target_class, dtype=torch.long)
    velocity = GuidedVelocity(model, cond, method=cfg.guidance, guidance_scale=cfg.guidance_scale,
                              eta=cfg.eta, norm_threshold=cfg.norm_threshold, momentum=cfg.momentum)
    noise = torch.randn(cfg.n_samples, 2, generator=torch.Generator().manual_seed(cfg.seed))
    grid = sigmas(cfg.n_sample_steps)
    history = History(meta={"algorithm": cfg.guidance, "seed": cfg.seed})
    samples, info = diffier_sample(velocity, noise, grid, iterations=cfg.diffier_iterations,
                                   step_size=cfg.diffier_step_size)
    for j, err in enumerate(info["error_per_step"]):
        history.append(j, error=err)
    with torch.no_grad():
        plain = rollout(lambda x, t: model(x, t, cond), noise, grid).samples
    center = centers[cfg.target_class]
    history.artifacts.update(
        samples=samples.tolist(), conditional=plain.tolist(), center=center.tolist(),
        norm_mean=float(samples.norm(dim=-1).mean()), mode_norm=float(center.norm()),
        on_mode=float(((samples - center).norm(dim=-1) < 0.9).float().mean()),
        accumulated_error=info["accumulated_error"])
    return history


__all__ = ["FlowPretrainConfig", "FlowFinetuneConfig", "FlowGuidanceConfig", "flow_pretrain",
           "flow_finetune", "flow_guidance", "pretrained_velocity", "train_velocity", "UPDATES"]
