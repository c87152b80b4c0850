"""Experiment ``memory_efficient``: a memory-efficient optimizer trains an MLP on digits.

One run = one optimizer (AdamW, GaLore, Fira, FRUGAL, BAdam, GradNormLoRP) on
:class:`lab.models.MLP` with minibatches of scikit-learn's digits. The config's knobs (rank, density,
projector gap, state-free rule, FRUGAL's projection, BAdam's switch period) go to every method that
has them; a spec such as ``"galore(scale=0.25)"`` adds or overrides arguments.

Per step the History holds the minibatch ``loss``, ``energy`` (the fraction of the gradient's
energy that the state-full subspace captured in that step, :func:`lab.optim.projection.captured_energy`;
1 for AdamW) and ``state_bytes`` (bytes in ``optimizer.state`` after the step); the final row adds
``test_accuracy``. ``artifacts["memory"]`` holds the peak optimizer-state bytes, the parameter
count, the peak bytes per parameter and the bytes by state key at the peak.

:func:`compare` runs several methods with one config and returns :class:`~lab.history.Runs`
(the notebook panel's callable). BAdam runs with ``freeze_inactive=False`` here, so that the
inactive blocks' gradients exist and the captured energy can be measured (its updates are the same).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

from lab import progress
from lab.checks import check_int, check_positive, check_range
from lab.claims import Claim
from lab.experiments._base import experiment, replace, resolve_device
from lab.experiments.optimizers import seeded_init_, settings
from lab.history import History, Runs
from lab.models import MLP
from lab.optim.badam import module_blocks
from lab.optim.memory import param_count, state_bytes, state_bytes_by_key
from lab.optim.projection import captured_energy
from lab.registry import make, parse_spec
from toy_envs.datasets import digits

METHODS: tuple[str, ...] = ("adamw", "galore", "fira", "frugal", "badam", "gradnorm_lorp")


@dataclass(frozen=True)
class MemoryConfig:
    """Config of ``memory_efficient``."""

    optimizer: str = "galore"  # registry name or spec, "frugal(projection='random')"
    rank: int = 4  # r of GaLore, Fira, GradNormLoRP
    density: float = 0.25  # rho of FRUGAL (fraction given to AdamW)
    update_proj_gap: int = 20  # T: steps between projector / block refreshes
    state_free_rule: Literal["signsgd", "sgd", "none"] = "signsgd"  # FRUGAL's rule off the subspace
    projection: Literal["svd", "random", "coordinates", "blockwise"] = "svd"  # FRUGAL's subspace
    state_free_lr_scale: float = 0.1  # FRUGAL's eta_f / eta (sign steps are large)
    switch_block_every: int = 10  # K of BAdam
    lr: float = 3e-3  # learning rate of every method
    steps: int = 50  # optimizer steps
    batch_size: int = 64  # minibatch size
    hidden: tuple[int, ...] = (64, 64, 64)  # hidden layer sizes of the MLP
    seed: int = 0  # seed of the split, the initialization, the batches and random projections
    device: str = "auto"  # "auto" = CUDA when available, else CPU


KNOBS: dict[str, Callable[[MemoryConfig], dict[str, Any]]] = {
    "adamw": lambda cfg: {},
    "galore": lambda cfg: dict(rank=cfg.rank, update_proj_gap=cfg.update_proj_gap, seed=cfg.seed),
    "fira": lambda cfg: dict(rank=cfg.rank, update_proj_gap=cfg.update_proj_gap, seed=cfg.seed),
    "gradnorm_lorp": lambda cfg: dict(rank=cfg.rank, update_proj_gap=cfg.update_proj_gap, seed=cfg.seed),
    "frugal": lambda cfg: dict(density=cfg.density, update_proj_gap=cfg.update_proj_gap,
                               projection=cfg.projection, state_free_rule=cfg.state_free_rule,
                               state_free_lr_scale=cfg.state_free_lr_scale, seed=cfg.seed),
    "badam": lambda cfg: dict(switch_block_every=cfg.switch_block_every, freeze_inactive=False, seed=cfg.seed),
}
"""How the config's knobs map to each method's keyword arguments (other optimizers get lr only)."""


def build(spec: str, model: torch.nn.Module, cfg: MemoryConfig) -> torch.optim.Optimizer:
    """The optimizer of ``spec`` for ``model`` with the config's knobs; the spec's kwargs win."""
    name, spec_kwargs = parse_spec(spec)
    knobs = KNOBS.get(name, lambda c: {})(cfg)
    params = module_blocks(model) if name == "badam" else model.parameters()
    return make("optimizer", name, params, **{"lr": cfg.lr, "weight_decay": 0.0, **knobs, **spec_kwargs})


def _plot(history: History):
    from lab.viz import curves

    return curves(history, ["loss", "energy"])


@experiment("memory_efficient", MemoryConfig, paper="FRUGAL: Memory-Efficient Optimization by Reducing "
            "State Overhead for Scalable Training", arxiv="2411.07837", plot=_plot,
            smoke={"steps": 3, "hidden": (16, 16)},
            summary="A memory-efficient optimizer on a digits MLP: loss, captured gradient energy, state bytes")
def memory_efficient(cfg: MemoryConfig) -> History:
    check_positive("lr", cfg.lr)
    check_int("steps", cfg.steps, minimum=1)
    check_int("batch_size", cfg.batch_size, minimum=1)
    check_int("rank", cfg.rank, minimum=1)
    check_range("density", cfg.density, 0.0, 1.0)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    x_train, y_train, x_test, y_test = (t.to(dev) for t in digits(seed=cfg.seed))
    with torch.device(dev):
        model = MLP(x_train.shape[1], cfg.hidden, 10)
    seeded_init_(model, generator)
    opt = build(cfg.optimizer, model, cfg)
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    order, cursor, peak, by_key = torch.randperm(len(y_train), generator=generator, device=dev), 0, -1, {}
    losses, energies, used_bytes = [], [], []
    written = 0

    def flush() -> None:                    # the steps run so far into the History (one sync)
        nonlocal written
        if written < len(losses):
            for step, (loss, energy, used) in enumerate(zip(torch.stack(losses[written:]).cpu().tolist(),
                                                            energies[written:], used_bytes[written:]), start=written):
                history.append(step, loss=loss, energy=float(energy), state_bytes=used)
            written = len(losses)

    for step in progress.steps(cfg.steps, desc=cfg.optimizer, history=history, flush=flush):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(y_train), generator=generator, device=dev), 0
        idx = order[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        opt.zero_grad()
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])  # (B, 10) logits -> scalar
        loss.backward()
        opt.step()
        used = state_bytes(opt)
        if used > peak:
            peak, by_key = used, state_bytes_by_key(opt)
        losses.append(loss.detach())
        energies.append(captured_energy(opt))
        used_bytes.append(used)
    flush()
    with torch.no_grad():
        test_accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    history.append(cfg.steps, test_accuracy=test_accuracy)
    count = param_count(opt)
    history.artifacts["memory"] = {"state_bytes": peak, "param_count": count,
                                   "bytes_per_param": peak / count, "by_key": by_key}
    return history


def compare(cfg: MemoryConfig, methods: tuple[str, ...] = METHODS) -> Runs:
    """``memory_efficient`` once per method (same data, init and knobs); Runs labelled by spec."""
    if not methods:
        raise ValueError("methods must name at least one optimizer spec")
    return Runs({spec: memory_efficient(replace(cfg, optimizer=spec)) for spec in methods})


# ---- the lesson's claims (notebook 04) ----------------------------------------------------------
CONTROLS = ("rank", "density", "update_proj_gap", "state_free_rule", "projection",
            "switch_block_every", "steps", "seed")
"""The fields notebook 04's panel exposes; each claim's config names all of them."""

def _bytes_per_param(history: History) -> float:
    return history.artifacts["memory"]["bytes_per_param"]


CLAIMS = [
    Claim(
        notebook="04_memory_efficient", panel="memory", name="state",
        text="At rank 4, GaLore and Fira keep about 1 byte of optimizer state per parameter "
             "(measured in optimizer.state) where AdamW keeps 8.",
        experiment="memory_efficient", seed_field=None, config=settings(MemoryConfig(), CONTROLS),
        variants={"adamw": {"optimizer": "adamw"}, "galore": {"optimizer": "galore"},
                  "fira": {"optimizer": "fira"}},
        holds=lambda runs: all(_bytes_per_param(runs[k]) <= 0.25 * _bytes_per_param(runs["adamw"])
                               for k in ("galore", "fira")),
        control={"rank": 64},
        control_text="rank 64, the full width of the 64x64 layers: the projector comes on top of "
                     "full-size moments and the state exceeds AdamW's (about 12 bytes per parameter)",
    ),
    Claim(
        notebook="04_memory_efficient", panel="memory", name="fira",
        text="With the same 1 byte per parameter, Fira trains better than GaLore: it adds back the "
             "part of the gradient outside the rank-4 subspace that GaLore drops (test accuracy "
             "after 50 steps at least 5 points higher).",
        experiment="memory_efficient", seeds=3, config=settings(MemoryConfig(), CONTROLS),
        variants={"galore": {"optimizer": "galore"}, "fira": {"optimizer": "fira"}},
        holds=lambda runs: runs["fira"].last("test_accuracy") >= runs["galore"].last("test_accuracy") + 0.05,
        control={"rank": 64},
        control_text="rank 64: the subspace is the whole gradient, Fira's residual is zero and it "
                     "matches GaLore",
    ),
]


__all__ = ["MemoryConfig", "memory_efficient", "compare", "build", "KNOBS", "METHODS", "CONTROLS", "CLAIMS"]
