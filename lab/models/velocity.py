"""A small velocity (or noise-prediction) field ``v_θ(x, t, c)`` for 2-D flow-matching lessons.

Input: a point ``x ∈ R^d`` (d = 2 on the toys), a time ``t ∈ [0, 1]`` (lab convention: t = 0 data,
t = 1 noise, ``x_t = (1 − t)·x_0 + t·ε``) and optionally a class ``c``. The time enters through a
sinusoidal embedding ``e(t) = [sin(ω_k t), cos(ω_k t)]_k`` with frequencies ``ω_k`` spaced
geometrically from 1 to 1000, the same trick as the position embedding of a transformer; the
class through a learned embedding whose extra last row is the *null* class, so one network gives
both the conditional and the unconditional prediction that classifier-free guidance mixes.

    h = SiLU(W_1 [x, e(t) (+ e(c))] + b_1) → … → W_L h + b_L ∈ R^d

Whether the output is read as a velocity ``v = ε − x_0`` or as a noise prediction is the
caller's convention; ``lab.flow.core`` reads it as the velocity of the linear path.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lab.checks import check_int


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``(N,) -> (N, dim)`` of times in [0, 1] (``dim`` even)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, dtype=t.dtype, device=t.device))  # (half,)
    angles = t[:, None] * freqs[None, :]                                           # (N, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)                        # (N, dim)


class VelocityField(nn.Module):
    """MLP ``v_θ(x, t, c)``: ``[x, e(t) + e(c)] -> hidden -> ... -> dim`` with SiLU.

    Args:
        dim: dimension of the points (2 on the toys).
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        t_embed: size of the (even) time embedding.
        n_classes: number of classes for a conditional field (0 = unconditional). Class index
            ``n_classes`` is the null class; ``cond=None`` means the null class.
    """

    def __init__(self, dim: int = 2, hidden: int = 64, depth: int = 2, t_embed: int = 16,
                 n_classes: int = 0):
        super().__init__()
        check_int("dim", dim, minimum=1)
        check_int("hidden", hidden, minimum=1)
        check_int("depth", depth, minimum=1)
        check_int("n_classes", n_classes, minimum=0)
        if check_int("t_embed", t_embed, minimum=2) % 2:
            raise ValueError(f"t_embed must be even, got {t_embed}")
        self.dim, self.t_embed, self.n_classes = dim, t_embed, n_classes
        self.class_embed = nn.Embedding(n_classes + 1, t_embed) if n_classes else None
        layers: list[nn.Module] = []
        width = dim + t_embed
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x (N, dim)``, ``t`` scalar or ``(N,)``, ``cond (N,)`` long or None -> ``(N, dim)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = time_embedding(t, self.t_embed)                                # (N, t_embed)
        if self.class_embed is not None:
            if cond is None:
                cond = torch.full((x.shape[0],), self.n_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(cond)
        elif cond is not None:
            raise ValueError("cond given to an unconditional VelocityField (n_classes=0)")
        return self.net(torch.cat([x, emb], dim=-1))                         # (N, dim)


__all__ = ["VelocityField", "time_embedding"]
