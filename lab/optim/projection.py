"""The low-rank projector shared by GaLore, Fira, FRUGAL and GradNormLoRP, and the block schedule
shared by BAdam and FRUGAL's blockwise mode.

A gradient ``G`` of an ``m x n`` weight is mapped to a small matrix ``R`` that the state-full rule
(Adam) sees, and the small update is mapped back:

    right side  (m >= n under "std"):  P in R^{r x n},  R = G P^T  (m x r),  lift(N) = N P
    left side   (m <  n under "std"):  P in R^{m x r},  R = P^T G  (r x n),  lift(N) = P N
    both sides  ("full"):              R = U^T G V^T  (r x r),               lift(N) = U N V
    coordinates (RandK):               R = G[:, idx] (or G[idx, :]),         lift(N) = scatter

How the subspace is chosen (``method``):

- ``"svd"`` (GaLore): the top-r singular vectors of the current gradient, ``P = Vh[:r]`` (right) or
  ``P = U[:, :r]`` (left). Orthonormal, so ``lift(project(G))`` is the best rank-r approximation
  of G in the chosen side's basis and ``||project(G)||_F^2`` is the energy it captures.
- ``"random"``: a random orthonormal basis (QR of a Gaussian matrix), independent of G.
- ``"coordinates"``: a random subset of ``r`` columns (right side) or rows (left side), kept as
  ``int64`` indices (FRUGAL's RandK). Its "basis" is a slice of the identity.

``proj_type`` picks the side as in galore-torch: ``"std"`` (right if m >= n else left),
``"reverse_std"`` (the opposite), ``"right"``, ``"left"``, ``"full"`` (both, SVD only). A rank
larger than the projected dimension is clamped to it (as in GaLore); rank 0 gives an empty
subspace (everything goes to the residual, used by FRUGAL at density 0).

A projector is a plain dict of tensors stored in ``optimizer.state[p]["projector"]``:
``{"right": (r, n)}``, ``{"left": (m, r)}``, ``{"left": (m, r), "right": (r, n)}``,
``{"cols": (r,) int64}`` or ``{"rows": (r,) int64}`` -- so ``state_dict()`` saves it and
:class:`LowRankBase` restores the index dtype that ``Optimizer.load_state_dict`` casts away.

Adam in a subspace: :func:`adam_moments_` (the two EMAs), :func:`adam_direction` (``m/(sqrt(v)+eps)``,
the HF/GaLore "Form B" whose step size ``lr sqrt(1-b2^t)/(1-b1^t)`` the caller applies) and
:func:`adamw_step_` (torch.optim.AdamW's "Form A" arithmetic, op for op, applied in place to any
target tensor: the parameter itself, or a zero buffer in the subspace).

Block schedules (BAdam, FRUGAL blockwise): :func:`next_blocks` returns which of ``D`` blocks are
active next, for the orders ``"descending"``, ``"ascending"``, ``"random"`` (a fresh random
permutation per pass over the blocks) and ``"fixed"``.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from lab.checks import check_betas, check_choice, check_int, check_nonneg, check_positive

METHODS = ("svd", "random", "coordinates")
PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")
BLOCK_ORDERS = ("descending", "ascending", "random", "fixed")


def side(shape: torch.Size | tuple[int, ...], proj_type: str = "std") -> str:
    """``"right"``, ``"left"`` or ``"both"`` for an ``(m, n)`` weight under ``proj_type``."""
    check_choice("proj_type", proj_type, PROJ_TYPES)
    m, n = shape
    if proj_type == "full":
        return "both"
    if proj_type in ("right", "left"):
        return proj_type
    tall = m >= n
    return "right" if tall == (proj_type == "std") else "left"


def clamp_rank(rank: int, shape: tuple[int, int], proj_type: str = "std") -> int:
    """The rank actually used: ``min(rank, size of the projected dimension)``."""
    m, n = shape
    where = side(shape, proj_type)
    limit = n if where == "right" else m if where == "left" else min(m, n)
    return min(rank, limit)


def compute(grad: Tensor, rank: int, *, method: str = "svd", proj_type: str = "std",
            generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A new projector for the 2-D gradient ``grad`` (see the module docstring for the layout).

    The SVD runs in float32 for half-precision gradients and in the gradient's dtype otherwise;
    the projector is stored in the gradient's dtype.
    """
    check_choice("method", method, METHODS)
    check_int("rank", rank, minimum=0)
    if grad.dim() != 2:
        raise ValueError(f"grad must be 2-D to be projected, got shape {tuple(grad.shape)}")
    where = side(grad.shape, proj_type)
    r = clamp_rank(rank, tuple(grad.shape), proj_type)
    m, n = grad.shape
    if method == "svd":
        work = grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad
        u, _, vh = torch.linalg.svd(work, full_matrices=False)  # (m, k), (k,), (k, n)
        out = {"left": u[:, :r], "right": vh[:r]}
    elif where == "both":
        raise ValueError(f"proj_type 'full' needs method 'svd', got method {method!r}")
    elif method == "random":
        dim = n if where == "right" else m
        gauss = torch.randn(dim, r, generator=generator, dtype=torch.float64,
                            device=generator.device if generator is not None else "cpu")
        q, _ = torch.linalg.qr(gauss)  # (dim, r), orthonormal columns
        q = q.to(device=grad.device)
        out = {"right": q.T, "left": q}
    else:  # coordinates
        dim = n if where == "right" else m
        idx = torch.randperm(dim, generator=generator,
                             device=generator.device if generator is not None else "cpu")
        idx = idx[:r].sort().values.to(grad.device)
        return {"cols": idx} if where == "right" else {"rows": idx}
    keep = ("left", "right") if where == "both" else (where,)
    return {k: out[k].to(grad.dtype).contiguous() for k in keep}


def project(grad: Tensor, proj: dict[str, Tensor]) -> Tensor:
    """``R``: the coordinates of ``grad`` in the projector's subspace."""
    if "cols" in proj:
        return grad[:, proj["cols"]]  # (m, r)
    if "rows" in proj:
        return grad[proj["rows"], :]  # (r, n)
    if "left" in proj and "right" in proj:
        return proj["left"].T @ grad @ proj["right"].T  # (r, r)
    if "right" in proj:
        return grad @ proj["right"].T  # (m, r)
    return proj["left"].T @ grad  # (r, n)


def project_back(low: Tensor, proj: dict[str, Tensor], shape: torch.Size | tuple[int, ...]) -> Tensor:
    """``lift(low)``: a full ``shape`` matrix from subspace coordinates (no scale applied)."""
    if "cols" in proj:
        return low.new_zeros(shape).index_copy_(1, proj["cols"], low)
    if "rows" in proj:
        return low.new_zeros(shape).index_copy_(0, proj["rows"], low)
    if "left" in proj and "right" in proj:
        return proj["left"] @ low @ proj["right"]
    if "right" in proj:
        return low @ proj["right"]  # (m, r) @ (r, n)
    return proj["left"] @ low  # (m, r) @ (r, n)


def rank_of(proj: dict[str, Tensor]) -> int:
    """The subspace dimension r of a projector."""
    for key, dim in (("cols", 0), ("rows", 0), ("right", 0), ("left", 1)):
        if key in proj:
            return proj[key].shape[dim]
    raise ValueError(f"not a projector: keys {sorted(proj)}")


def energy(grad: Tensor, proj: dict[str, Tensor]) -> float:
    """``||lift(project(G))||^2``: the gradient energy inside the subspace (orthonormal bases)."""
    return float(project(grad, proj).pow(2).sum())


def next_blocks(current: int, n_blocks: int, order: str, *, count: int = 1,
                queue: list[int] | None = None, generator: torch.Generator | None = None,
                ) -> tuple[list[int], list[int]]:
    """The ``count`` blocks to activate after block ``current``, and the remaining random queue.

    ``descending``: current-1, current-2, ... (mod D); ``ascending``: current+1, ...;
    ``fixed``: stay; ``random``: the next ``count`` entries of ``queue``, refilled with a fresh
    ``randperm(D)`` whenever it runs out (each pass visits every block once).
    """
    check_choice("order", order, BLOCK_ORDERS)
    check_int("n_blocks", n_blocks, minimum=1)
    count = min(count, n_blocks)
    queue = list(queue or [])
    if order == "fixed":
        return [(current + k) % n_blocks for k in range(count)], queue
    if order in ("descending", "ascending"):
        sign = -1 if order == "descending" else 1
        return [(current + sign * (k + 1)) % n_blocks for k in range(count)], queue
    chosen: list[int] = []
    while len(chosen) < count:
        if not queue:
            queue = torch.randperm(n_blocks, generator=generator,
                                   device=generator.device if generator is not None else "cpu").tolist()
        block = queue.pop(0)
        if block not in chosen:
            chosen.append(block)
    return chosen, queue


def check_adam_args(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Validate the Adam hyperparameters every optimizer here shares."""
    check_positive("lr", lr)
    check_betas(betas)
    check_nonneg("eps", eps)
    check_nonneg("weight_decay", weight_decay)


def check_lowrank_args(rank: int | None, update_proj_gap: int, scale: float, proj_type: str,
                       projection: str, *, proj_types: tuple[str, ...] = PROJ_TYPES) -> None:
    """Validate the projector hyperparameters (``rank=None`` means the full-rank path)."""
    if rank is not None:
        check_int("rank", rank, minimum=1)
    check_int("update_proj_gap", update_proj_gap, minimum=1)
    check_positive("scale", scale)
    check_choice("proj_type", proj_type, proj_types)
    check_choice("projection", projection, METHODS)
    if proj_type == "full" and projection != "svd":
        raise ValueError(f"proj_type 'full' needs projection 'svd', got projection {projection!r}")


def adam_moments_(x: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, betas: tuple[float, float]) -> None:
    """``m <- b1 m + (1-b1) x;  v <- b2 v + (1-b2) x^2`` in place (torch's op order)."""
    beta1, beta2 = betas
    exp_avg.lerp_(x, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(x, x, value=1 - beta2)


def adam_direction(exp_avg: Tensor, exp_avg_sq: Tensor, eps: float) -> Tensor:
    """Form B (galore-torch, Fira): ``N = m / (sqrt(v) + eps)``, before ``lr sqrt(bc2)/bc1``."""
    return exp_avg / (exp_avg_sq.sqrt() + eps)


def adamw_step_(target: Tensor, x: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: float,
                lr: float, betas: tuple[float, float], eps: float) -> None:
    """Form A (torch.optim.AdamW): update the moments with ``x`` and add the Adam step to
    ``target``: ``target <- target - (lr/(1-b1^t)) m / (sqrt(v)/sqrt(1-b2^t) + eps)``.

    Op for op the single-tensor path of ``torch.optim.AdamW`` (weight decay excluded), so that
    FRUGAL at density 1 and BAdam on one block reproduce it bit for bit.
    """
    adam_moments_(x, exp_avg, exp_avg_sq, betas)
    beta1, beta2 = betas
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    target.addcdiv_(exp_avg, denom, value=-step_size)


class LowRankBase(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` plus what the low-rank family shares.

    - ``self.generator``: a ``torch.Generator`` seeded with ``seed`` (random projections, random
      block orders); its state is saved by ``state_dict()``.
    - ``self.schedule``: a dict of plain Python values (block schedule, global step) saved by
      ``state_dict()`` under ``"schedule"``.
    - ``load_state_dict`` restores both and turns the projector indices back into ``int64``
      (``Optimizer.load_state_dict`` casts every state tensor to the parameter's dtype).
    - ``subspace_gradient(p)``: the part of ``p.grad`` the state-full rule sees, lifted back to
      full size; None for parameters on the full-rank path. :func:`captured_energy` uses it.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], seed: int = 0):
        check_int("seed", seed)
        super().__init__(params, defaults)
        self.generator = torch.Generator().manual_seed(seed)
        self.schedule: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["rng_state"] = self.generator.get_state()
        out["schedule"] = {k: (list(v) if isinstance(v, list) else v) for k, v in self.schedule.items()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("rng_state", None)
        schedule = state_dict.pop("schedule", {})
        super().load_state_dict(state_dict)
        if rng is not None:
            self.generator.set_state(rng)
        self.schedule = {k: (list(v) if isinstance(v, list) else v) for k, v in schedule.items()}
        for state in self.state.values():
            proj = state.get("projector")
            if proj is not None:
                for key in ("cols", "rows"):
                    if key in proj:
                        proj[key] = proj[key].long()
        self._after_load()

    def _after_load(self) -> None:
        """Hook for subclasses (BAdam re-applies ``requires_grad`` to the active block)."""

    def subspace_gradient(self, p: Tensor) -> Tensor | None:
        proj = self.state.get(p, {}).get("projector")
        if proj is None or p.grad is None:
            return None
        return project_back(project(p.grad, proj), proj, p.shape)


@torch.no_grad()
def captured_energy(optimizer: torch.optim.Optimizer) -> float:
    """Fraction of the current gradients' energy the state-full subspace captures.

    ``sum ||S(G)||^2 / sum ||G||^2`` over the parameters that the optimizer handles with a
    low-rank or block rule (``subspace_gradient(p)`` is not None); 1.0 when there is none
    (a full-rank optimizer such as AdamW sees the whole gradient).
    Call it after ``step()`` so that it measures the subspace used by that step.
    """
    subspace = getattr(optimizer, "subspace_gradient", None)
    if subspace is None:
        return 1.0
    kept = total = 0.0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            sub = subspace(p)
            if sub is None:
                continue
            kept += float(sub.pow(2).sum())
            total += float(p.grad.pow(2).sum())
    return kept / total if total > 0 else 1.0


__all__ = ["METHODS", "PROJ_TYPES", "BLOCK_ORDERS", "side", "clamp_rank", "compute", "project",
           "project_back", "rank_of", "energy", "next_blocks", "LowRankBase", "captured_energy",
           "check_adam_args", "check_lowrank_args", "adam_moments_", "adam_direction",
           "adamw_step_"]
