"""FRUGAL: a state-full rule (AdamW) on a small subspace, a state-free rule on everything else.

Paper: "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
Zmushko et al., arXiv 2411.07837 (ICML 2025; code read from a public fork of the paper's code).

The update: per step, for every parameter theta with gradient G (lr = eta, density = rho, weight
decay lambda; project/lift = into the subspace and back):

    theta <- theta (1 - eta lambda)                                decoupled decay, on every tensor
    projected 2-D weights:
        G_low = project(G)                                         the state-full subspace
        Delta_active   = lift(AdamW(G_low))                        m, v live in the subspace only
        G_rest = G - lift(G_low)                                   what the subspace misses
        Delta_inactive = -eta_f sign(G_rest)   ("signsgd", default)
                         -eta_f G_rest         ("sgd")  or 0  ("none"),  eta_f = eta * state_free_lr_scale
        theta <- theta + Delta_active + Delta_inactive
    every other tensor (biases, norms, groups with ``density=None``): a full AdamW step.

AdamW here is torch.optim.AdamW's "Form A" (``denom = sqrt(v)/sqrt(1-b2^t) + eps``).

How the subspace is chosen (``projection``), refreshed every T = ``update_proj_gap`` steps
(global step % T == 0, before the update, so also before the first one):

- ``"svd"`` (GaLore-style): top-r singular vectors of G, r = round(rho * projected dimension);
- ``"random"``: a random orthonormal basis of the same size;
- ``"coordinates"`` (RandK): r random columns (rows for a left projection);
- ``"blockwise"`` (BAdam-style): whole tensors; round(rho * D) of the D projected tensors get AdamW
  on their full gradient, the rest the state-free rule on theirs. ``block_order``: ``"random"``
  (a fresh random order per pass), ``"ascending"``, ``"descending"`` or ``"fixed"``.

With ``reset_statistics=True`` (default) the AdamW state of the subspace (m, v, step) restarts at
every refresh, because the old moments live in a basis that no longer exists (GaLore keeps them).

Intuition: the update is full-rank (every direction moves), but only the small subspace pays for
Adam's memory; the rest follows signSGD, which needs no state. Limits [derived]: blockwise at
rho = 1 is exactly torch AdamW; rho = 0 gives ``theta <- theta (1 - eta lambda) - eta sign(G)``.

Where it departs from GaLore (and AdamW): GaLore drops G_rest and keeps its moments across
refreshes; FRUGAL steps along G_rest with a state-free rule (the update is full-rank) and by
default restarts the subspace's moments at each refresh. The state-full rule is torch AdamW's
Form A, not GaLore's Form B.

Choices (where the fork leaves room):
- One rounding rule (``round``) for every projection (the fork floors for coordinates).
- Coordinates follow the SVD's side rule (columns when m >= n).
- When r reaches the full projected dimension the residual is set to exactly 0 (otherwise sign()
  would turn round-off into full steps).
- In blockwise mode tensors that turn inactive drop their state, and the count of active tensors
  uses the constructor's density.
- Defaults are the fork's (rho 0.25, T 200, signSGD, lr 1e-3, eps 1e-8, weight_decay 0.01). The
  paper's recommended state-free lr ratio is not verified here: ``state_free_lr_scale``
  defaults to 1.
- ``svd="lowrank"`` draws from the optimizer's generator (``seed``), saved in ``state_dict()``.

Half precision: the AdamW state and the subspace arithmetic are float32 (in float16 the default
eps 1e-8 rounds to 0, and the first step of a zero coordinate would be 0/0 = NaN).
``svd="lowrank"``: randomized SVD at each refresh (:func:`lab.optim.projection.randomized_svd`).
``fused=True``: the group's AdamW steps run as one compiled region per device/dtype
(:func:`lab.optim.projection.adamw_steps_`). A NaN/Inf gradient raises ``ValueError`` naming the
parameter before anything changes (``check_finite=False`` to opt out).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from lab.checks import check_choice, check_int, check_nonneg, check_range
from lab.optim._common import check_finite, check_grad, evaluate, path_options
from lab.optim.projection import (SVDS, LowRankBase, adamw_steps_, check_adam_args, clamp_rank,
                                  compute, next_blocks, project, project_back, work_dtype)
from lab.registry import register

PROJECTIONS = ("svd", "random", "coordinates", "blockwise")
STATE_FREE_RULES = ("signsgd", "sgd", "none")


def state_free_update(residual: Tensor, rule: str) -> Tensor:
    """The state-free direction for the residual (to be scaled by ``-eta_f``)."""
    if rule == "signsgd":
        return residual.sign()  # sign(0) = 0
    if rule == "sgd":
        return residual
    return torch.zeros_like(residual)


def subspace_rank(shape: tuple[int, int], density: float, proj_type: str) -> int:
    """r = round(density * projected dimension)."""
    full = clamp_rank(max(shape), shape, proj_type)
    return int(round(density * full))


@register("optimizer", "frugal",
          paper="FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
          arxiv="2411.07837", summary="FRUGAL: AdamW on a gradient subspace, signSGD/SGD on the rest")
class FRUGAL(LowRankBase):
    """FRUGAL with AdamW as the state-full rule.

    Args:
        params: parameters or param groups (a group may override density, update_proj_gap,
            proj_type, state_free_rule, state_free_lr_scale, reset_statistics and the Adam
            arguments; ``density=None`` puts a group on the full AdamW path).
        lr (eta), betas, eps, weight_decay (lambda): AdamW's (torch.optim.AdamW semantics).
        density (rho): fraction of each weight (or of the weights, blockwise) given to AdamW.
        update_proj_gap (T): steps between subspace refreshes.
        projection: ``"svd"``, ``"random"``, ``"coordinates"`` or ``"blockwise"``.
        proj_type: side of the projection (``"std"``, ``"reverse_std"``, ``"right"``, ``"left"``).
        state_free_rule: ``"signsgd"``, ``"sgd"`` or ``"none"`` (GaLore-like: residual dropped).
        state_free_lr_scale: eta_f / eta.
        reset_statistics: restart the subspace AdamW state at each refresh.
        block_order: order of blocks in ``"blockwise"`` mode.
        svd: ``"exact"`` or ``"lowrank"`` (randomized SVD) for ``projection="svd"``.
        seed: seeds random projections and block orders.
        fused: the AdamW steps as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, *, density: float | None = 0.25,
                 update_proj_gap: int = 200, projection: str = "svd", proj_type: str = "std",
                 state_free_rule: str = "signsgd", state_free_lr_scale: float = 1.0,
                 reset_statistics: bool = True, block_order: str = "random", svd: str = "exact",
                 seed: int = 0, fused: bool | None = None, check_finite: bool = True):
        self.projection = check_choice("projection", projection, PROJECTIONS)
        self.block_order = check_choice("block_order", block_order, ("random", "ascending", "descending", "fixed"))
        self.svd = check_choice("svd", svd, SVDS)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, density=density,
                        update_proj_gap=update_proj_gap, proj_type=proj_type, state_free_rule=state_free_rule,
                        state_free_lr_scale=state_free_lr_scale, reset_statistics=reset_statistics,
                        **path_options("FRUGAL", foreach=None, fused=fused, check_finite=check_finite))
        super().__init__(params, defaults, seed=seed)
        for group in self.param_groups:
            check_adam_args(group["lr"], group["betas"], group["eps"], group["weight_decay"])
            if group["density"] is not None:
                check_range("density", group["density"], 0.0, 1.0)
            check_int("update_proj_gap", group["update_proj_gap"], minimum=1)
            check_choice("proj_type", group["proj_type"], ("std", "reverse_std", "right", "left"))
            check_choice("state_free_rule", group["state_free_rule"], STATE_FREE_RULES)
            check_nonneg("state_free_lr_scale", group["state_free_lr_scale"])
        if projection == "blockwise" and density is None:
            raise ValueError("density must be a number in [0, 1] for projection 'blockwise', got None")
        self.schedule = {"step": 0, "active": [], "current": None, "queue": []}

    # ---- which tensors are handled how ---------------------------------------------------
    def _projected(self) -> list[Tensor]:
        """The 2-D weights of groups with a density, in param-group order (the blocks)."""
        return [p for g in self.param_groups if g["density"] is not None for p in g["params"] if p.dim() == 2]

    def _choose_blocks(self) -> None:
        blocks = self._projected()
        count = int(round(self.defaults["density"] * len(blocks)))
        current = self.schedule["current"]
        if current is None:  # first choice: descending starts at the last block, others at 0
            current = 0 if self.block_order == "descending" else len(blocks) - 1
            if self.block_order == "fixed":
                current = 0
        chosen, queue = (next_blocks(current, len(blocks), self.block_order, count=count,
                                     queue=self.schedule["queue"], generator=self.generator)
                         if count > 0 else ([], self.schedule["queue"]))
        self.schedule.update(active=sorted(chosen), queue=queue,
                             current=chosen[-1] if chosen else current)

    # ---- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One FRUGAL step; ``closure`` (optional) re-evaluates the loss."""
        loss = evaluate(closure)
        t_global = self.schedule["step"]
        blockwise = self.projection == "blockwise"
        active: set[int] = set()
        if blockwise:
            blocks = self._projected()
            if t_global % self.defaults["update_proj_gap"] == 0:
                self._choose_blocks()
                for i, p in enumerate(blocks):  # refresh: reset or drop the AdamW state of blocks
                    if self.defaults["reset_statistics"] or i not in self.schedule["active"]:
                        self.state.pop(p, None)
            active = {id(blocks[i]) for i in self.schedule["active"]}
        for index, group in enumerate(self.param_groups):
            lr, wd = group["lr"], group["weight_decay"]
            lr_free = lr * group["state_free_lr_scale"]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                check_grad(type(self).__name__, p, p.grad)
            check_finite(self, group, params, [p.grad for p in params])
            adam: list[tuple] = []       # (target, x, state) for the batched AdamW step
            finish: list[tuple] = []     # what to do with each AdamW result afterwards
            for p in params:
                grad = p.grad.to(work_dtype(p))          # float32 for half-precision weights
                if wd != 0:
                    p.mul_(1 - lr * wd)  # theta <- theta (1 - eta lambda), on every tensor
                projected = group["density"] is not None and p.dim() == 2
                if not projected or (blockwise and id(p) in active):
                    adam.append((p, grad, self._adam_state(p, grad.dtype)))
                elif blockwise:  # inactive block: state-free rule on the whole gradient
                    self.state.pop(p, None)
                    p.add_(state_free_update(grad, group["state_free_rule"]), alpha=-lr_free)
                else:
                    target, low, state = self._split_inputs(
                        p, grad, group, refresh=t_global % group["update_proj_gap"] == 0)
                    adam.append((target, low, state))
                    finish.append((p, grad, target, low, state))
            for _, _, state in adam:
                state["step"] += 1
            # AdamW (Form A) on every full tensor and every subspace, in one batch
            adamw_steps_(self, index, [a[0] for a in adam], [a[1] for a in adam],
                         [a[2]["exp_avg"] for a in adam], [a[2]["exp_avg_sq"] for a in adam],
                         [a[2]["step"].item() for a in adam], lr, group["betas"], group["eps"],
                         bool(group.get("fused")))
            for p, grad, delta_low, low, state in finish:
                self._split_finish(p, grad, delta_low, low, state, group)
        self.schedule["step"] = t_global + 1
        return loss

    def _adam_state(self, p: Tensor, dtype: torch.dtype) -> dict:
        """A full tensor's AdamW state (created on first use; float32 for half precision)."""
        state = self.state[p]
        if "exp_avg" not in state:
            state.update(step=torch.tensor(0.0, device="cpu"), exp_avg=torch.zeros_like(p, dtype=dtype),
                         exp_avg_sq=torch.zeros_like(p, dtype=dtype))
        return state

    def _split_inputs(self, p: Tensor, grad: Tensor, group: dict, refresh: bool,
                      ) -> tuple[Tensor, Tensor, dict]:
        """Projector (refreshed if due), ``G_low = project(G)`` and a zero target for its step."""
        state = self.state[p]
        rank = subspace_rank(tuple(p.shape), group["density"], group["proj_type"])
        if "projector" not in state or refresh:
            state["projector"] = compute(grad, rank, method=self.projection, proj_type=group["proj_type"],
                                         generator=self.generator, svd=getattr(self, "svd", "exact"))
            if group["reset_statistics"] or "exp_avg" not in state:
                low_shape = project(grad, state["projector"]).shape
                state.update(step=torch.tensor(0.0, device="cpu"), exp_avg=grad.new_zeros(low_shape),
                             exp_avg_sq=grad.new_zeros(low_shape))
        low = project(grad, state["projector"])  # G_low   (m, r) or (r, n)
        return torch.zeros_like(low), low, state

    def _split_finish(self, p: Tensor, grad: Tensor, delta_low: Tensor, low: Tensor, state: dict,
                      group: dict) -> None:
        """Add ``Delta_active = lift(AdamW(G_low))`` and the state-free step on the residual."""
        proj = state["projector"]
        p.add_(project_back(delta_low, proj, p.shape))  # Delta_active
        rank = subspace_rank(tuple(p.shape), group["density"], group["proj_type"])
        full = clamp_rank(max(p.shape), tuple(p.shape), group["proj_type"])
        if rank < full:  # at full rank the residual is exactly zero (round-off must not be signed)
            residual = grad - project_back(low, proj, p.shape)  # G_rest
            p.add_(state_free_update(residual, group["state_free_rule"]),
                   alpha=-group["lr"] * group["state_free_lr_scale"])

    def subspace_gradient(self, p: Tensor) -> Tensor | None:
        if self.projection != "blockwise" or p.grad is None:
            return super().subspace_gradient(p)
        blocks = self._projected()
        ids = [id(q) for q in blocks]
        if id(p) not in ids:
            return None
        return p.grad if ids.index(id(p)) in self.schedule["active"] else torch.zeros_like(p.grad)


__all__ = ["FRUGAL", "state_free_update", "subspace_rank", "PROJECTIONS", "STATE_FREE_RULES"]
