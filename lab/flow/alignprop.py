"""AlignProp: backpropagate a differentiable reward through the whole sampling chain.

Paper: "Aligning Text-to-Image Diffusion Models with Reward Backpropagation", Prabhudesai et al.,
arXiv 2310.03739 (reference code: mihirp1998/AlignProp).

The loss: the sampler is a differentiable function ``x_0 = Φ_θ(ε)`` of the parameters, so for a
differentiable reward r

    L(θ) = −loss_coeff · mean_i r(Φ_θ(ε_i)),   ∇_θ L by backpropagation through the last K steps,

where ``ε_i`` are the initial noises, Φ_θ the S-step sampler of the field v_θ, ``loss_coeff`` = 0.01
(the paper's) and K = ``backprop_steps`` the number of final sampler steps that keep the graph
(earlier states are detached). Intuition: no policy gradient and no log-probs — the reward's own
gradient is pushed back through the sampler, the lowest-variance signal there is, and with an
unbounded reward also the fastest way to over-optimise.

Where it departs from DDPO: a pathwise (reparameterised) gradient of the reward instead of a
score-function estimate over stochastic steps; it needs a differentiable reward but no SDE,
advantages, ratios or clipping.

Choices:
- The sampler is the deterministic Euler ODE of :mod:`lab.flow.core` (the paper: DDIM with guidance;
  LoRA parameters and gradient checkpointing are not needed on the toy).
- K defaults to all steps, and a K larger than the number of steps is cut to it.
- ``randomize=True`` draws K uniformly from {1, …, K} with the given ``generator`` (required) — the
  paper's ``truncated_backprop_rand`` draws from (0, 50) with 50 steps.

Expected on the toy: the fastest reward ascent of all methods, and with the unbounded reward
``r = x_1`` unbounded drift off the data (over-optimisation). The samples come back (detached) in
the metrics under ``"samples"``, with the K used under ``"backprop_steps"``.
"""
from __future__ import annotations

from typing import Callable

import torch

from lab.checks import check_int, check_positive
from lab.flow.core import Velocity, rollout
from lab.registry import register


@register("flow_loss", "alignprop",
          paper="Aligning Text-to-Image Diffusion Models with Reward Backpropagation",
          arxiv="2310.03739")
def alignprop_loss(velocity: Velocity, noise: torch.Tensor, grid: torch.Tensor,
                   reward_fn: Callable[[torch.Tensor], torch.Tensor], *, loss_coeff: float = 0.01,
                   backprop_steps: int | None = None, randomize: bool = False,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """``−loss_coeff·mean r(x_0)`` with gradients through the last K sampler steps.

    ``backprop_steps`` K (None = all steps); with ``randomize`` K ~ U{1, …, K} using ``generator``.
    Returns (loss, metrics with ``reward`` and the K used) and stores the samples under ``"samples"``.
    """
    check_positive("loss_coeff", loss_coeff)
    n_steps = grid.shape[0] - 1
    k = n_steps if backprop_steps is None else check_int("backprop_steps", backprop_steps, minimum=1)
    k = min(k, n_steps)
    if randomize:
        if generator is None:
            raise ValueError("generator is required with randomize=True")
        k = int(torch.randint(1, k + 1, (1,), generator=generator))
    samples = rollout(velocity, noise, grid, grad_steps=k).samples             # (N, d), graph in last k steps
    rewards = reward_fn(samples)
    loss = -loss_coeff * rewards.mean()
    return loss, {"loss": float(loss.detach()), "reward": float(rewards.detach().mean()), "backprop_steps": k,
                  "samples": samples.detach()}


__all__ = ["alignprop_loss"]
