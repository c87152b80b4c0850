"""Conditional flow matching (CFM) and Weighted CFM: regress a velocity field on the path's velocity.

Paper: "Flow Matching for Generative Modeling", Lipman et al., arXiv 2210.02747 (the same linear
path as rectified flow, "Flow Straight and Fast", Liu et al., arXiv 2209.03003) for ``cfm``;
"Weighted Conditional Flow Matching", Calvo-Ordoñez et al., arXiv 2507.22270 for ``wcfm``.

The loss: draw data ``x_0``, noise ``ε ~ N(0, I)`` and ``t ~ U[0, 1]``, and

    L_CFM(θ) = E_{t, x_0, ε} ‖v_θ(x_t, t) − (ε − x_0)‖²,   x_t = (1 − t)x_0 + tε,

    L_W(θ; ε_G) = E[ w(x_0, ε) · ‖v_θ(x_t, t) − (ε − x_0)‖² ],   w(x_0, ε) = exp(−c(x_0, ε)/ε_G),

where ``v_θ`` is the field being trained, ``x_t`` the point of the linear path at time t (t = 0
data, t = 1 noise, the lab's convention), ``ε − x_0`` the path's velocity, ``c(x_0, ε) = ‖ε − x_0‖²``
the transport cost of the pair and ``ε_G`` the Gibbs temperature. Intuition: the minimiser of
L_CFM is the marginal velocity ``E[ε − x_0 | x_t]``, whose ODE carries N(0, I) to the data; W-CFM
lets cheap (short) pairs dominate, which approximates the entropic-OT coupling (straighter paths,
like minibatch OT-CFM) at plain CFM cost, at the price of tilting the marginals when ε_G is small.
(torchcfm writes the same loss with source x0 = noise, target x1 = data and ``u_t = x1 − x0``: the
lab's t is their 1 − t.)

Where it departs from CFM: ``cfm`` is the parent (of W-CFM here, and the pretraining loss whose
per-sample reweighting AWM and AC-Flow build on). W-CFM only multiplies each independent pair's
error by its Gibbs weight; ε_G → ∞ gives w ≡ 1, i.e. CFM.

Choices:
- ``‖·‖²`` sums over the coordinates; the batch is averaged (``cfm_loss``, ``wcfm_loss``).
- W-CFM's weights are divided by their batch mean, so the loss scale matches CFM (the paper
  summary is ambiguous here [unverified]).
- The temperature is relative to the data: ``ε_G = epsilon · median_batch(c)`` (``epsilon`` = 1 by
  default); ``epsilon=math.inf`` returns w ≡ 1 exactly.
- The weights are detached and computed with the batch's minimum cost subtracted before ``exp``
  (the batch-mean normalisation cancels it), so a cold kernel does not underflow to 0/0.

``straightness`` measures how far an Euler ODE trajectory's velocities stray from its chord (0 for
straight paths), the quantity W-CFM is meant to lower.
"""
from __future__ import annotations

import math

import torch

from lab.checks import check_positive, check_same_shape
from lab.registry import register


def _per_sample_error(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    check_same_shape(v_pred=v_pred, x0=x0, noise=noise)
    return ((v_pred - (noise - x0)) ** 2).sum(-1)                           # (N,)


@register("flow_loss", "cfm", paper="Flow Matching for Generative Modeling", arxiv="2210.02747")
def cfm_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``mean_i ‖v_pred_i − (noise_i − x0_i)‖²`` for ``v_pred = v_θ(x_t, t)``; returns (loss, metrics)."""
    loss = _per_sample_error(v_pred, x0, noise).mean()
    return loss, {"loss": float(loss.detach())}


def wcfm_weights(x0: torch.Tensor, noise: torch.Tensor, epsilon: float = 1.0) -> torch.Tensor:
    """Gibbs weights ``exp(−c/ε_G)`` / batch mean, ``ε_G = epsilon·median(c)``; ``epsilon=inf`` -> ones."""
    cost = ((noise - x0) ** 2).sum(-1)                                       # (N,)
    if isinstance(epsilon, float) and epsilon == math.inf:
        return torch.ones_like(cost)
    check_positive("epsilon", epsilon)
    scale = epsilon * cost.quantile(0.5).clamp_min(1e-12)
    # subtract the min cost before exp (the batch normalisation cancels it) for stability
    w = torch.exp(-(cost - cost.min()) / scale)
    return w / w.mean()


@register("flow_loss", "wcfm", paper="Weighted Conditional Flow Matching", arxiv="2507.22270")
def wcfm_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, *,
              epsilon: float = 1.0) -> tuple[torch.Tensor, dict]:
    """``mean_i w_i ‖v_pred_i − (noise_i − x0_i)‖²`` with :func:`wcfm_weights`."""
    err = _per_sample_error(v_pred, x0, noise)
    w = wcfm_weights(x0, noise, epsilon).detach()
    loss = (w * err).mean()
    return loss, {"loss": float(loss.detach()), "weight_max": float(w.max()),
                  "ess": float(w.sum() ** 2 / (w ** 2).sum() / w.numel())}


def straightness(velocity, noise: torch.Tensor, n_steps: int = 20) -> float:
    """Path straightness ``E Σ_j ‖v(x_j, σ_j) − (x_0 − x_S)/1‖²·Δσ`` along the Euler ODE (0 = straight)."""
    from lab.flow.core import rollout, sigmas

    grid = sigmas(n_steps, device=noise.device)
    with torch.no_grad():
        traj = rollout(velocity, noise, grid)
        chord = traj.xs[0] - traj.xs[-1]                                     # (N, d) = ε − x̂_0
        total = 0.0
        for j in range(n_steps):
            v = velocity(traj.xs[j], float(grid[j]))
            total += float(((v - chord) ** 2).sum(-1).mean()) * float(grid[j] - grid[j + 1])
    return total


__all__ = ["cfm_loss", "wcfm_loss", "wcfm_weights", "straightness"]
