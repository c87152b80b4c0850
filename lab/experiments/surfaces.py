"""Experiment ``optimizer_on_surface``: one optimizer, N steps on a 2-D test surface.

The History holds, per step, the point ``xy``, the ``loss`` f(xy), the distance to the nearest
minimizer and the gradient norm; ``artifacts['effective_step']`` the per-coordinate step
``|x_{t+1} - x_t| / |g_t|`` (how far each coordinate moved per unit of gradient, the quantity
that adaptive methods change).

Divergence is reported, not hidden: a run whose point leaves the box ``|x|, |y| <= 1e6`` or turns
non-finite stops there, and ``meta['diverged']`` holds the step at which it did; a run that ends
with a higher loss than it started from (unstable without blowing up yet) also gets
``meta['warning']``, a one-line explanation a panel shows in warning colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lab import progress
from lab.checks import check_int, check_positive
from lab.experiments._base import experiment, resolve_device
from lab.history import History
from lab.registry import make, parse_spec
from toy_envs.surfaces import SURFACES, get_surface

DIVERGED = 1e6
"""A coordinate beyond this magnitude (or a non-finite one) counts as diverged."""


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
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot(history: History):
    from lab.viz import trajectory_figure

    return trajectory_figure(history)


@experiment("optimizer_on_surface", SurfaceConfig, paper="Benchmarking Neural Network Training Algorithms",
            arxiv="2306.07179", plot=_plot, smoke={"steps": 5},
            summary="Any registered optimizer on a 2-D test surface: trajectory and loss")
def optimizer_on_surface(cfg: SurfaceConfig) -> History:
    surface = get_surface(cfg.surface)
    check_positive("lr", cfg.lr)
    check_int("steps", cfg.steps, minimum=1)
    dev = resolve_device(cfg.device)
    start = (cfg.x0 if cfg.x0 is not None else surface.start[0],
             cfg.y0 if cfg.y0 is not None else surface.start[1])
    xy = torch.tensor(start, dtype=torch.float64, device=dev, requires_grad=True)
    name, spec_kwargs = parse_spec(cfg.optimizer)
    kwargs = {"lr": cfg.lr, **({"weight_decay": cfg.weight_decay} if cfg.weight_decay else {})}
    opt = make("optimizer", name, [xy], **{**kwargs, **spec_kwargs})
    needs_closure = bool(getattr(opt, "requires_closure", False))   # two-pass (SAM, WSAM)
    history = History(meta={"algorithm": cfg.optimizer, "surface": surface.name, "seed": None})

    def closure():
        opt.zero_grad()
        loss = surface(xy)
        loss.backward()
        return loss

    points, losses, grads = [], [], []          # per step: xy_t, f(xy_t), g_t (all on dev)
    diverged = None
    written = checked = 0                       # rows in the History; rows known to stay (in the box)

    def flush() -> None:                        # the checked steps so far into the History (one sync)
        nonlocal written
        if written >= checked:
            return
        pts = torch.stack(points[written:checked])                      # (k, 2)
        with torch.no_grad():
            dist_k = surface.distance_to_min(pts).cpu().tolist()
        loss_k = torch.stack(losses[written:checked]).cpu().tolist()
        gn_k = torch.stack(grads[written:checked]).norm(dim=1).cpu().tolist()
        for i, xy_t in enumerate(pts.cpu().tolist()):
            history.append(written + i, loss=loss_k[i], xy=xy_t, distance=dist_k[i], grad_norm=gn_k[i])
        written = checked

    for step in progress.steps(cfg.steps, desc=cfg.optimizer, history=history, flush=flush):
        points.append(xy.detach().clone())
        losses.append(closure().detach())
        grads.append(xy.grad.detach().clone())
        opt.step(closure) if needs_closure else opt.step()
        if step % 10 == 9 or step == cfg.steps - 1:         # check rarely: a sync on a GPU
            bad = ~torch.isfinite(xy.detach()).all() | (xy.detach().abs().max() > DIVERGED)
            if bool(bad):
                diverged = _first_bad_step(points, xy.detach(), step)
                break
            checked = step + 1                              # rows 0..step stay whatever comes next
    if diverged is None:
        points.append(xy.detach().clone())
        with torch.no_grad():
            losses.append(surface(xy.detach()))
    else:                                                   # keep the path up to the blow-up
        points, losses, grads = points[:diverged + 1], losses[:diverged + 1], grads[:diverged + 1]
    xys = torch.stack(points)                               # (T, 2), T = steps + 1 (or fewer)
    with torch.no_grad():
        dist = surface.distance_to_min(xys)                 # (T,)
    g = torch.stack(grads)                                  # (T', 2), one per step taken
    moved = (xys[1:] - xys[:-1]).abs()                      # (T - 1, 2)
    eff = moved / g[:len(moved)].abs().clamp_min(1e-12)     # (T - 1, 2)
    xys_l, loss_l, dist_l = xys.cpu().tolist(), torch.stack(losses).cpu().tolist(), dist.cpu().tolist()
    gn_l = g.norm(dim=1).cpu().tolist()
    for t in range(written, len(xys_l)):                    # the rows flush() has not written
        row = {"loss": loss_l[t], "xy": xys_l[t], "distance": dist_l[t]}
        if t < len(gn_l):
            row["grad_norm"] = gn_l[t]
        history.append(t, **row)
    history.artifacts["effective_step"] = eff.cpu().tolist()
    history.artifacts["surface"] = {"name": surface.name, "minimizers": surface.minimizers}
    _report_instability(history, cfg, diverged)
    return history


def _first_bad_step(points: list[torch.Tensor], current: torch.Tensor, step: int) -> int:
    """The step whose update first left the box (or turned non-finite); checks run every 10 steps."""
    trail = torch.stack(points + [current])                 # (step + 2, 2)
    bad = ~torch.isfinite(trail).all(1) | (trail.abs().amax(1) > DIVERGED)
    return int(bad.float().argmax().item()) - 1             # the update of step t lands at t + 1


def _report_instability(history: History, cfg: SurfaceConfig, diverged: int | None) -> None:
    """``meta['diverged']`` and a one-line ``meta['warning']`` for a run that blew up or got worse."""
    if diverged is not None:
        history.meta["diverged"] = diverged
        history.meta["warning"] = (f"{cfg.optimizer} diverged at step {diverged} (|x| > {DIVERGED:.0e}) "
                                   f"at lr = {cfg.lr:g}: the step is too large for this surface's "
                                   f"curvature; lower lr")
        return
    first, last = history["loss"][0], history["loss"][-1]
    if last > first:
        history.meta["warning"] = (f"{cfg.optimizer} ended higher than it started (loss {first:.3g} -> "
                                   f"{last:.3g}) at lr = {cfg.lr:g}: unstable; lower lr")


__all__ = ["SurfaceConfig", "optimizer_on_surface", "SURFACES", "DIVERGED"]
