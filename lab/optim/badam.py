"""BAdam: block coordinate descent with Adam -- one block of parameters trains at a time.

Paper: "BAdam: A Memory Efficient Full Parameter Optimization Method for Large Language Models",
Luo et al., arXiv 2404.02827 (reference code: PyPI ``badam`` ``BlockOptimizer``).

The update: the parameters are split into D blocks theta_1..theta_D (in an LLM: one transformer
layer each). With active block i, its gradient G_i and K = ``switch_block_every``:

    for K steps:  theta_i <- AdamW step on theta_i with gradient G_i      (other blocks frozen)
    then:         clear the Adam state (m, v, t: bias correction restarts), i <- next(i)

``switch_mode``: ``"descending"`` (default; start at the last block, i <- i-1 mod D),
``"ascending"`` (i <- i+1), ``"random"`` (a fresh random permutation of the blocks per pass),
``"fixed"`` (stay). Worked [derived]: D = 4, K = 50, descending: steps 1-50 train block 3,
51-100 block 2, 101-150 block 1, 151-200 block 0, 201- block 3 again; at step 51 Adam's step
counter restarts at 1 (a full-magnitude first Adam step, about -lr sign(g)).

Intuition: every parameter is trained (full-parameter, unlike LoRA), but Adam's two moments and
the gradients exist for one block only: optimizer memory ~ 2/D of AdamW's.

Where it departs from AdamW: only one block steps at a time and its Adam state restarts at every
switch; the active block's step is torch.optim.AdamW's arithmetic (decoupled decay before the
update, Form-A eps).

Choices:
- The blocks are the param groups (``module_blocks(model)`` builds one group per module that owns
  parameters; with a single group every tensor is its own block). The reference's
  ``include_embedding`` / ``include_lm_head`` prefix rules are replaced by explicit param groups.
- With ``freeze_inactive=True`` (the paper's memory saving) the optimizer sets ``requires_grad``
  so that only the active block receives gradients; with False all gradients are computed and
  the inactive ones ignored (useful to measure gradient energy).
- The switch happens at the end of the K-th step, so that the next backward already fills the
  new block. Inactive blocks get no update and no decay.
- The hyperparameters are the base optimizer's (the reference wraps any), so defaults are
  torch.optim.Adam's (lr 1e-3, eps 1e-8, weight_decay 0).
- Frozen parameters: a parameter whose ``requires_grad`` is False when the optimizer is built was
  frozen by the user; BAdam never trains it and never turns its ``requires_grad`` on (it only
  toggles the parameters that were trainable).
- Half-precision weights keep float32 Adam state.

``fused=True`` runs the block's AdamW step as one compiled region per device/dtype; a NaN/Inf
gradient raises ``ValueError`` naming the parameter (``check_finite=False`` to opt out).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from lab.checks import check_choice, check_int
from lab.optim._common import check_finite, check_grad, evaluate, path_options
from lab.optim.projection import LowRankBase, adamw_steps_, check_adam_args, next_blocks, work_dtype
from lab.registry import register

SWITCH_MODES = ("descending", "ascending", "random", "fixed")


def module_blocks(model: nn.Module) -> list[dict[str, Any]]:
    """One param group per module that directly owns parameters, in definition order.

    A parameter shared by several modules (tied embeddings and output layer) joins the block of
    the first module that owns it.
    """
    groups, seen = [], set()
    for _, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            groups.append({"params": own})
    return groups


@register("optimizer", "badam",
          paper="BAdam: A Memory Efficient Full Parameter Optimization Method for Large Language Models",
          arxiv="2404.02827", summary="BAdam: Adam on one block of parameters at a time, switching every K steps")
class BAdam(LowRankBase):
    """Block-coordinate AdamW.

    Args:
        params: parameters or param groups; each group is one block (a single group: one block
            per tensor). ``module_blocks(model)`` gives one block per module.
        lr (eta), betas, eps, weight_decay (lambda): the active block's AdamW.
        switch_block_every (K): steps spent on a block before switching.
        switch_mode: ``"descending"``, ``"ascending"``, ``"random"`` or ``"fixed"``.
        start_block: index of the first block (default: last for descending, 0 otherwise,
            random for random).
        freeze_inactive: set ``requires_grad=False`` on inactive blocks (no gradient memory).
        seed: seeds the random block order.
        fused: the block's AdamW step as one compiled region per device/dtype (None = no).
        check_finite: raise ``ValueError`` naming the parameter on a NaN/Inf gradient.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, switch_block_every: int = 50,
                 switch_mode: str = "descending", start_block: int | None = None,
                 freeze_inactive: bool = True, seed: int = 0, fused: bool | None = None,
                 check_finite: bool = True):
        check_adam_args(lr, betas, eps, weight_decay)
        check_int("switch_block_every", switch_block_every, minimum=1)
        check_choice("switch_mode", switch_mode, SWITCH_MODES)
        if not isinstance(freeze_inactive, bool):
            raise TypeError(f"freeze_inactive must be a bool, got {type(freeze_inactive).__name__}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      **path_options("BAdam", foreach=None, fused=fused,
                                                     check_finite=check_finite)), seed=seed)
        # parameters the user froze: never trained, never unfrozen
        self.frozen = {id(p) for g in self.param_groups for p in g["params"] if not p.requires_grad}
        for group in self.param_groups:
            check_adam_args(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        self.switch_block_every, self.switch_mode, self.freeze_inactive = switch_block_every, switch_mode, freeze_inactive
        n = len(self.blocks())
        if n == 0:
            raise ValueError("BAdam got no trainable parameter (every parameter has requires_grad=False)")
        queue: list[int] = []
        if start_block is not None:
            check_int("start_block", start_block, minimum=0)
            if start_block >= n:
                raise ValueError(f"start_block must be < the number of blocks ({n}), got {start_block}")
            block = start_block
        elif switch_mode == "random":
            queue = torch.randperm(n, generator=self.generator, device=self.generator.device).tolist()
            block = queue.pop(0)
        else:
            block = n - 1 if switch_mode == "descending" else 0
        self.schedule = {"block": block, "block_step": 0, "queue": queue, "step": 0}
        self._apply_freeze()

    def _layout(self) -> list[tuple[int, list[Tensor]]]:
        """``(param group index, trainable parameters)`` of each block; frozen ones left out."""
        if len(self.param_groups) > 1:
            blocks = [(i, list(g["params"])) for i, g in enumerate(self.param_groups)]
        else:
            blocks = [(0, [p]) for p in self.param_groups[0]["params"]]
        blocks = [(i, [p for p in ps if id(p) not in self.frozen]) for i, ps in blocks]
        return [(i, ps) for i, ps in blocks if ps]

    def blocks(self) -> list[list[Tensor]]:
        """The parameter lists of the D blocks (a block of user-frozen parameters only is no block)."""
        return [ps for _, ps in self._layout()]

    def _group_of(self, block: int) -> tuple[int, dict]:
        index = self._layout()[block][0]
        return index, self.param_groups[index]

    def _apply_freeze(self) -> None:
        if not self.freeze_inactive:
            return
        for i, params in enumerate(self.blocks()):
            for p in params:
                p.requires_grad_(i == self.schedule["block"])

    def _after_load(self) -> None:
        self._apply_freeze()

    @property
    def active_block(self) -> int:
        """Index of the block that the next step trains."""
        return self.schedule["block"]

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step on the active block; switches block after K steps on it."""
        loss = evaluate(closure)
        block = self.schedule["block"]
        index, group = self._group_of(block)
        lr, wd = group["lr"], group["weight_decay"]
        params = [p for p in self.blocks()[block] if p.grad is not None]
        for p in params:
            check_grad(type(self).__name__, p, p.grad)
        check_finite(self, group, params, [p.grad for p in params])
        states = []
        for p in params:
            state = self.state[p]
            if "exp_avg" not in state:
                dtype = work_dtype(p)
                state.update(step=torch.tensor(0.0, device="cpu"), exp_avg=torch.zeros_like(p, dtype=dtype),
                             exp_avg_sq=torch.zeros_like(p, dtype=dtype))
            state["step"] += 1
            if wd != 0:
                p.mul_(1 - lr * wd)  # theta <- theta (1 - eta lambda)
            states.append(state)
        adamw_steps_(self, index, params,
                     [p.grad.to(s["exp_avg"].dtype) for p, s in zip(params, states)],
                     [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                     [s["step"].item() for s in states], lr, group["betas"], group["eps"],
                     bool(group.get("fused")))
        self.schedule["step"] += 1
        self.schedule["block_step"] += 1
        self.schedule["trained"] = block  # the block this step used (for captured_energy)
        if self.schedule["block_step"] == self.switch_block_every:
            self._switch()
        return loss

    def _switch(self) -> None:
        """Drop the finished block's Adam state (and gradients when freezing); move on."""
        old = self.schedule["block"]
        for p in self.blocks()[old]:
            self.state.pop(p, None)
            if self.freeze_inactive:
                p.grad = None
        (new,), queue = next_blocks(old, len(self.blocks()), self.switch_mode,
                                    queue=self.schedule["queue"], generator=self.generator)
        self.schedule.update(block=new, block_step=0, queue=queue)
        self._apply_freeze()

    def subspace_gradient(self, p: Tensor) -> Tensor | None:
        if p.grad is None:
            return None
        block = self.schedule.get("trained", self.schedule["block"])
        active = any(p is q for q in self.blocks()[block])
        return p.grad if active else torch.zeros_like(p.grad)


__all__ = ["BAdam", "module_blocks", "SWITCH_MODES"]
