"""Local SGD with an outer step (DiLoCo-style baseline).

Paper: "DiLoCo: Distributed Low-Communication Training of Language Models", Douillard et al.,
arXiv 2311.08105, for the outer Nesterov step; used as the baseline of "EDiT: A Local-SGD-Based
Efficient Distributed Training Method for Large Language Models", Cheng et al., arXiv 2412.07210.

The update: K workers hold copies theta_k of one model. A round:

    theta_k <- theta_anchor                         for every worker k
    H inner steps of AdamW (or SGD) on worker k's own minibatches
    Delta_k = theta_anchor - theta_k                 pseudo-gradient            (K, p)
    Delta   = (1/K) sum_k Delta_k                    plain average              (p,)
    theta_anchor <- OuterSGD(theta_anchor, Delta)    eta_out, Nesterov mu

where theta_anchor (p,) is the shared model of the last synchronization, p the number of
parameters and OuterSGD torch's SGD with the outer learning rate eta_out and Nesterov momentum mu
on the "gradient" Delta: ``b <- Delta`` at the first outer step, ``b <- mu b + Delta`` after,
``theta_anchor <- theta_anchor - eta_out (Delta + mu b)`` (see ``lab.distributed.core``).
Intuition: one all-reduce every H inner steps instead of every step: H times less communication,
and the outer momentum smooths the rounds' averaged moves.

Where it departs from synchronous data-parallel SGD: it is the parent of EDiT and A-EDiT (which
change only the reduction). With eta_out = 1, mu = 0 the outer step is model averaging ("Local
SGD"); with additionally H = 1 and inner SGD it is exactly synchronous data-parallel SGD on the
averaged gradient.

Choices:
- Defaults are DiLoCo's (eta_out = 0.7, mu = 0.9, Nesterov) [unverified values]; Nesterov is
  switched off when mu = 0 (where it makes no difference).
- As in the spec, the inner optimizer's state is kept per worker across rounds (not reset at a
  sync); only the parameters are reset to the anchor.

The simulation runs the K workers vectorized (``lab.distributed.simulate``);
:func:`lab.distributed.core.distributed_sync` is the same outer step over real processes.
"""
from __future__ import annotations

import torch

from lab.distributed.core import OuterSGD, pseudo_gradients
from lab.registry import register


@register("distributed", "local_sgd",
          paper="DiLoCo: Distributed Low-Communication Training of Language Models", arxiv="2311.08105")
class LocalSGD:
    """Local SGD / DiLoCo: average the workers' pseudo-gradients, apply an outer Nesterov-SGD step.

    Args:
        outer_lr: eta_out, the outer learning rate (1.0 with momentum 0 = model averaging).
        outer_momentum: mu, the outer momentum.
        nesterov: Nesterov outer momentum (DiLoCo) rather than heavy ball.
    """

    def __init__(self, *, outer_lr: float = 0.7, outer_momentum: float = 0.9, nesterov: bool = True):
        self.outer = OuterSGD(lr=outer_lr, momentum=outer_momentum, nesterov=nesterov and outer_momentum > 0)
        self.rounds = 0
        self.skip_empty = False  # EDiT: skip the outer step when every worker is flagged
        self.last_stats: dict[str, float] = {}

    def reduce(self, deltas: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
        """Delta = (1/K) sum_k Delta_k.  ``deltas`` (K, p) -> (p,)."""
        self.last_stats = {"pseudo_grad_norm": float(deltas.norm(dim=1).mean())}
        return deltas.mean(dim=0)

    # ---- the reduction in pieces, for workers in separate processes ------------------------
    # A worker holds only its own Delta_k. It shares its per-layer norms (K x L scalars, one
    # all_gather), every worker computes the same weights from them (``layer_weights``), and one
    # all_reduce sums w_lk Delta_k^l; ``finish_layer`` then applies what follows the sum.
    def layer_sizes_for(self, p: int) -> tuple[int, ...]:
        """The layers of a flat vector of p entries the reduction works on (one for Local SGD)."""
        return (p,)

    def layer_weights(self, norms: torch.Tensor, steps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights (L, K), flagged (L, K))`` from the per-layer norms (L, K): 1/K, nothing flagged."""
        L, K = norms.shape
        self.last_stats = {"pseudo_grad_norm": float(norms.norm(dim=0).mean())}
        return (torch.full((L, K), 1.0 / K, dtype=norms.dtype, device=norms.device),
                torch.zeros(L, K, dtype=torch.bool, device=norms.device))

    def finish_layer(self, delta: torch.Tensor) -> torch.Tensor:
        """What follows the weighted sum of one layer (EDiT: clipping). (p_l,)"""
        return delta

    def outer_step(self, anchor: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The outer step on the reduced Delta (skipped when every worker was eliminated)."""
        self.rounds += 1
        if self.skip_empty and float(delta.abs().sum()) < 1e-6:
            return anchor.clone()
        return self.outer.step(anchor, delta)

    def sync(self, anchor: torch.Tensor, workers: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
        """One communication round: reduce the pseudo-gradients of ``workers`` (K, p) and return the
        new anchor (p,). ``steps`` (K,) = inner steps each worker took (used by A-EDiT)."""
        deltas = pseudo_gradients(anchor, workers)  # (K, p)
        delta = self.reduce(deltas, steps)  # (p,)
        return self.outer_step(anchor, delta)  # skipped if every worker was flagged

    def state_dict(self) -> dict:
        return {"rounds": self.rounds, "outer": self.outer.state_dict()}
