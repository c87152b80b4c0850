"""The probability path, the samplers and the per-step log-probabilities shared by every flow method.

Convention (the lab's, as in spec C and policy_losses Part D): t = 0 is data, t = 1 is noise,

    x_t = (1 − t)·x_0 + t·ε,   ε ~ N(0, I),   target velocity u_t = dx_t/dt = ε − x_0.

A trained field ``v_θ(x, t) ≈ E[ε − x_0 | x_t]`` is sampled by integrating from t = 1 to t = 0 on a
grid ``σ_0 = 1 > σ_1 > … > σ_S = 0`` (:func:`sigmas`, optionally SD3-shifted
``σ' = sσ / (1 + (s − 1)σ)``), step ``dt = σ_{j+1} − σ_j < 0``:

- ODE (Euler): ``x_{j+1} = x_j + v·dt``;
- SDE (Euler–Maruyama) with the same marginals (Flow-GRPO, arXiv 2505.05470): for the linear path
  the score is ``∇ log p_σ(x) = −(x + (1 − σ)·v)/σ``, so

      μ_j = x_j + [v + (g_j² / (2σ_j))·(x_j + (1 − σ_j)·v)]·dt,   x_{j+1} = μ_j + g_j·sqrt(−dt)·z,

  with diffusion coefficient ``g_j`` from a schedule: ``"flow_grpo"`` ``g = a·sqrt(σ/(1 − σ))``
  (a = ``noise_level`` = 0.7; at σ = 1 the denominator uses 1 − σ_1), ``"dance"`` (DanceGRPO,
  arXiv 2505.07818) the constant ``g = η``; ``"ode"`` ``g = 0`` (plain Euler).

Each stochastic step is a Gaussian policy ``π_θ(x_{j+1} | x_j) = N(μ_j, (g_j²·(−dt)) I)``; its
log-density is **averaged over the coordinates** (not summed), as the DDPO and Flow-GRPO code do,
which rescales the effective clip range. :func:`transition_logprobs` re-scores stored transitions
under the current θ (the PPO ratio), :func:`rollout` keeps gradients only in its last
``grad_steps`` steps (AlignProp's truncated backpropagation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from lab.checks import check_choice, check_int, check_nonneg, check_positive

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
SCHEDULES = ("ode", "flow_grpo", "dance")


def flow_path(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, u_t)`` of the linear path: ``x_t = (1 − t)x_0 + tε``, ``u_t = ε − x_0``."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    tt = t.view(-1, *([1] * (x0.dim() - 1)))                                   # (N, 1)
    return (1 - tt) * x0 + tt * noise, noise - x0


def x0_prediction(x: torch.Tensor, v: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """``x̂_0 = x − t·v`` (the denoised estimate implied by a velocity)."""
    return x - t * v


def sigmas(n_steps: int, shift: float = 1.0, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Grid ``1 = σ_0 > … > σ_S = 0`` of ``n_steps + 1`` points, shifted by ``sσ/(1 + (s−1)σ)``."""
    check_int("n_steps", n_steps, minimum=1)
    check_positive("shift", shift)
    s = torch.linspace(1.0, 0.0, n_steps + 1, device=device)
    return shift * s / (1 + (shift - 1) * s)


def diffusion_coef(sigma: float, sigma_next: float, schedule: str = "flow_grpo",
                   noise_level: float = 0.7) -> float:
    """``g`` of one step: ``a·sqrt(σ/(1−σ))`` (flow_grpo), ``η`` (dance) or 0 (ode)."""
    check_choice("schedule", schedule, SCHEDULES)
    check_nonneg("noise_level", noise_level)
    if schedule == "ode":
        return 0.0
    if schedule == "dance":
        return float(noise_level)
    denom = 1.0 - sigma if sigma < 1.0 else 1.0 - sigma_next
    return float(noise_level * math.sqrt(sigma / denom))


def sde_mean(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float, g: float) -> torch.Tensor:
    """``μ = x + [v + (g²/(2σ))(x + (1−σ)v)]·dt`` with ``dt = σ_next − σ`` (Euler when g = 0)."""
    dt = sigma_next - sigma
    return x + (v + (g ** 2 / (2 * sigma)) * (x + (1 - sigma) * v)) * dt


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, std² I)`` averaged over the last dimension: ``(N, d) -> (N,)``."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    return (-(x - mean) ** 2 / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).mean(-1)


@dataclass
class Trajectory:
    """One batch of sampled chains.

    ``xs (S+1, N, d)`` states from noise (xs[0]) to samples (xs[-1]); ``means (S, N, d)`` the
    step means; ``stds (S,)`` step standard deviations ``g_j·sqrt(−dt)``; ``logprobs (N, S)``
    (zeros at deterministic steps); ``sigmas (S+1,)``; ``coefs (S,)`` the ``g_j``.
    """

    xs: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    logprobs: torch.Tensor
    sigmas: torch.Tensor
    coefs: torch.Tensor

    @property
    def samples(self) -> torch.Tensor:
        """Final points ``(N, d)``."""
        return self.xs[-1]

    @property
    def stochastic(self) -> torch.Tensor:
        """``(S,)`` bool: steps that are Gaussian policies (std > 0)."""
        return self.stds > 0

    def subset(self, index: torch.Tensor) -> "Trajectory":
        """The chains ``index`` (long, into the N samples) of this batch, every step kept."""
        return Trajectory(self.xs[:, index], self.means[:, index], self.stds, self.logprobs[index],
                          self.sigmas, self.coefs)


def rollout(velocity: Velocity, noise: torch.Tensor, grid: torch.Tensor, *, schedule: str = "ode",
            noise_level: float = 0.7, generator: torch.Generator | None = None,
            grad_steps: int = 0, sde_steps: torch.Tensor | None = None) -> Trajectory:
    """Integrate ``velocity`` from ``noise`` (t = 1) along ``grid`` to t = 0.

    Args:
        velocity: ``v(x, t)`` with ``t`` a float.
        noise: starting points ``(N, d)``.
        grid: ``(S+1,)`` decreasing times from :func:`sigmas`.
        schedule / noise_level: the SDE (see module docstring); ``"ode"`` = Euler.
        generator: randomness of the SDE noise (required when ``schedule != "ode"``).
        grad_steps: keep the autograd graph through the last ``grad_steps`` steps only (earlier
            states are detached): 0 = no gradients, ``S`` = full backpropagation.
        sde_steps: optional ``(S,)`` bool: which steps are stochastic (others deterministic);
            default all steps when ``schedule != "ode"``.
    """
    check_int("grad_steps", grad_steps, minimum=0)
    n_steps = grid.shape[0] - 1
    if schedule != "ode" and generator is None:
        raise ValueError("generator is required for a stochastic schedule")
    if sde_steps is not None and sde_steps.shape != (n_steps,):
        raise ValueError(f"sde_steps must have shape ({n_steps},), got {tuple(sde_steps.shape)}")
    active = [True] * n_steps if sde_steps is None else [bool(a) for a in sde_steps.tolist()]
    x = noise
    times = grid.tolist()                                              # python floats: no per-step sync
    xs, means, stds, coefs, logps = [x], [], [], [], []
    for j in range(n_steps):
        sigma, sigma_next = times[j], times[j + 1]
        g = diffusion_coef(sigma, sigma_next, schedule, noise_level) if active[j] else 0.0
        with torch.set_grad_enabled(j >= n_steps - grad_steps):
            x_in = x if j >= n_steps - grad_steps else x.detach()
            mean = sde_mean(x_in, velocity(x_in, sigma), sigma, sigma_next, g)   # (N, d)
            std = g * math.sqrt(sigma - sigma_next)
            if std > 0:
                x_next = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)
                logps.append(gaussian_logprob(x_next.detach(), mean.detach(), std))
            else:
                x_next = mean
                logps.append(mean.new_zeros(mean.shape[0]))
        x = x_next
        xs.append(x)
        means.append(mean)
        stds.append(std)
        coefs.append(g)
    dev = noise.device
    return Trajectory(torch.stack(xs), torch.stack(means), torch.tensor(stds, device=dev),
                      torch.stack(logps, dim=1), grid, torch.tensor(coefs, device=dev))


def transition_logprobs(velocity: Velocity, traj: Trajectory, steps: torch.Tensor | None = None,
                        *, batched: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-score stored stochastic transitions under ``velocity``: ``(logprobs (N, K), means (K, N, d))``.

    ``steps`` (long, K indices) defaults to every stochastic step of ``traj``. With ``batched``
    the K steps go through ``velocity`` in one call, ``v(x (K·N, d), t (K·N,))`` (a field that
    takes one time per row, as :class:`~lab.models.velocity.VelocityField` does): the same numbers
    as K calls, one forward and backward pass instead of K.
    """
    steps = torch.nonzero(traj.stochastic).flatten() if steps is None else steps
    if steps.numel() == 0:
        raise ValueError("traj has no stochastic step to score (sample with an SDE schedule)")
    index = steps.to(traj.xs.device)
    x, x_next = traj.xs[index].detach(), traj.xs[index + 1].detach()             # (K, N, d)
    sigma, sigma_next = traj.sigmas[index], traj.sigmas[index + 1]               # (K,)
    k, n, d = x.shape
    if batched:
        t = sigma[:, None].expand(k, n).reshape(-1)                                # (K·N,)
        v = velocity(x.reshape(k * n, d), t).reshape(k, n, d)
    else:
        v = torch.stack([velocity(x[i], s) for i, s in enumerate(sigma.tolist())])
    col = (slice(None), None, None)                                               # (K,) -> (K, 1, 1)
    mean = sde_mean(x, v, sigma[col], sigma_next[col], traj.coefs[index][col])    # (K, N, d)
    logps = gaussian_logprob(x_next, mean, traj.stds[index][col])                  # (K, N)
    return logps.T, mean


__all__ = ["SCHEDULES", "Trajectory", "flow_path", "x0_prediction", "sigmas", "diffusion_coef",
           "sde_mean", "gaussian_logprob", "rollout", "transition_logprobs"]
