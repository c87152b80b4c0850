"""Experiment ``optimizer_on_surface``: one optimizer, N steps on a 2-D test surface.

The History holds, per step, the point ``xy``, the ``loss`` f(xy), the distance to the nearest
minimizer and the gradient norm; ``artifacts['effective_step']`` the per-coordinate step
``|x_{t+1} - x_t| / |g_t|`` (how far each coordinate moved per unit of gradient, the quantity
that adaptive methods change). A run that diverges stops early and records ``diverged``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lab import progress
from lab.checks import check_int, check_positive
from lab.experiments._base import experiment
from lab.history import History
from lab.registry import make, parse_spec
from toy_envs.surfaces import SURFACES, get_surface


@dataclass(frozen=True)
class SurfaceConfig:
    """Config of ``optimizer_on_surface``."""

    optimizer: str = "adam"  # registry name or spec with literal kwargs, "sgd(momentum=0.9)"
    surface: str = "rosenbrock"  # one of toy_envs.surfaces.SURFACES
    lr: float = 0.05  # learning rate (a spec's own lr= wins)
    steps: int = 300  # optimizer steps
    x0: float | None = None  # start x; None = the surface's default start
    y0: float | None = None  # start y; None = the surface's default start
    weight_decay: float = 0.0  # passed to the optimizer when non-zero


def _plot(history: History):
    from lab.viz import trajectory_figure

    return trajectory_figure(history)


@experiment("optimizer_on_surface", SurfaceConfig, paper="Benchmarking Neural Network Training Algorithms",
            arxiv="2306.07179", plot=_plot,
            summary="Any registered optimizer on a 2-D test surface: trajectory and loss")
def optimizer_on_surface(cfg: SurfaceConfig) -> History:
    surface = get_surface(cfg.surface)
    check_positive("lr", cfg.lr)
    check_int("steps", cfg.steps, minimum=1)
    start = (cfg.x0 if cfg.x0 is not None else surface.start[0],
             cfg.y0 if cfg.y0 is not None else surface.start[1])
    xy = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    name, spec_kwargs = parse_spec(cfg.optimizer)
    kwargs = {"lr": cfg.lr, **({"weight_decay": cfg.weight_decay} if cfg.weight_decay else {})}
    opt = make("optimizer", name, [xy], **{**kwargs, **spec_kwargs})
    history = History(meta={"algorithm": cfg.optimizer, "surface": surface.name, "seed": None})
    eff_steps = []

    def closure():
        opt.zero_grad()
        loss = surface(xy)
        loss.backward()
        return loss

    for step in progress.steps(cfg.steps, desc=cfg.optimizer, history=history):
        before = xy.detach().clone()
        loss = closure()
        grad = xy.grad.detach().clone()
        history.append(step, loss=loss.item(), xy=before, grad_norm=grad.norm().item(),
                       distance=surface.distance_to_min(before).item())
        opt.step(closure) if _needs_closure(opt) else opt.step()
        moved = (xy.detach() - before).abs()
        eff_steps.append((moved / grad.abs().clamp_min(1e-12)).tolist())
        if not torch.isfinite(xy).all() or xy.detach().abs().max() > 1e6:
            history.meta["diverged"] = step
            break
    else:
        final = xy.detach()
        history.append(cfg.steps, loss=surface(final).item(), xy=final,
                       distance=surface.distance_to_min(final).item())
    history.artifacts["effective_step"] = eff_steps
    history.artifacts["surface"] = {"name": surface.name, "minimizers": surface.minimizers}
    return history


def _needs_closure(opt: torch.optim.Optimizer) -> bool:
    """Two-pass optimizers (SAM, WSAM) declare ``requires_closure = True``."""
    return bool(getattr(opt, "requires_closure", False))


__all__ = ["SurfaceConfig", "optimizer_on_surface", "SURFACES"]
