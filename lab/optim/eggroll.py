"""EGGROLL: evolution strategies whose perturbation of each weight matrix has rank r.

Paper: "Evolution Strategies at the Hyperscale", Sarkar et al. (with Fellows, Duque, ...), arXiv
2511.16652 ("Evolution Guided GeneRal Optimisation via Low-rank Learning"). Reference code:
ESHyperscale/HyperscaleES (JAX, ``noiser/eggroll.py``); the lab follows the code where the paper
leaves constants open.

The update: ES (``lab.optim.es``) perturbs a matrix W (out x in) with a full Gaussian matrix: each
member costs an (out x in) tensor and its own matmul. EGGROLL draws two thin factors instead
(symbols defined below the block):

    A_k ~ N(0, 1)^(out x r),  B_k ~ N(0, 1)^(in x r),   E_k = A_k B_k^T / sqrt(r)
    member i (pair k = i // 2, sign s_i = +1 for even i, -1 for odd i):
        W_i = W + s_i sigma E_k
        forward  x W_i^T = x W^T + s_i (sigma / sqrt(r)) (x B_k) A_k^T     (never forms E_k)
    shaped fitness  f~ = (f - mean f) / sqrt(var f + 1e-5)                (z-scores)
    g_hat_W = sqrt(N) * (1/N) sum_i f~_i s_i sigma E_k(i)
            = sigma / (sqrt(r) sqrt(N)) * sum_k (f~_k+ - f~_k-) A_k B_k^T    (one einsum)
    W <- B(W, grad = -g_hat_W)                                            (default: SGD)

Other parameters (biases, norms, any tensor that is not 2-D) get full-rank noise
``s_i sigma eps_k`` and ``g_hat = sqrt(N) mean_i(f~_i s_i sigma eps_k(i))``.

Symbols: r = rank, sigma = noise scale, N = population (even: antithetic pairs share A_k, B_k),
f = fitness of each member (higher is better), f~ = z-scored fitness, x = an input batch,
B(., grad) = the outer (base) optimizer's step, eps_k = full-rank Gaussian noise. The 1/sqrt(r)
keeps every entry of E_k at unit variance for any r, so E_k has the same covariance as a full Gaussian matrix; what differs is higher moments (e.g.
E[E_ij^4] = 3 + 6/r), so the expected update converges to the full-rank ES update as r grows,
at the rate O(1/r) the paper proves. A sum of N/2 rank-r terms is high-rank: the update is not
confined to a rank-r subspace.

Where it departs from ES: low-rank noise on matrices; z-score instead of centered-rank shaping;
the update is scaled by sigma*sqrt(N) relative to ES's (with full-rank Gaussian noise in place of
E_k, ``g_hat_EGGROLL = sigma sqrt(N) g_hat_ES`` for the same shaped fitness); SGD outer step.

Choices (where the paper is silent or the code is specific):
- Constants follow the reference code (the spec marks the paper-level sigma / sqrt(N)
  placement as unverified; the code's ``-sqrt(N) * mean(...)`` was checked).
- Defaults: sigma 1e-3 and rank 1 (reference init and LLM script), SGD outer optimizer. The
  reference has no default learning rate; the lab uses 1e-3 (torch.optim.SGD's).
- rank may exceed min(out, in); the noise is then a full-rank matrix with the same covariance.
- The factors of one step are kept from the forward to the update (memory O(N r (out + in)) per
  matrix) rather than regenerated from seeds; the generator state in ``state_dict()`` is all
  the persistent noise state. ``noise_reuse`` and ``group_size`` of the reference are not
  offered (one fresh draw per step, one global z-score).
- ``fitness(params_batch)`` receives a :class:`~lab.optim.es.LowRankBatch` for each 2-D
  parameter (factored; ``.materialize()`` gives the (N, out, in) tensors) and a tensor (N, ...)
  for the others. :func:`~lab.optim.es.population_call` runs an ``nn.Module`` with the
  low-rank forward on every ``nn.Linear``.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from lab.checks import check_int
from lab.optim.es import ES, LowRankBatch
from lab.registry import register


def lowrank_direction(A: Tensor, B: Tensor, coef: Tensor, *, sigma: float, population: int) -> Tensor:
    """``sigma / (sqrt(r) sqrt(N)) * sum_k c_k A_k B_k^T`` without forming any A_k B_k^T.

    A (M, out, r), B (M, in, r), coef (M,) -> (out, in).
    """
    r = A.shape[-1]
    scale = sigma / (math.sqrt(r) * math.sqrt(population))
    return torch.einsum("k,kor,kir->oi", coef.to(A.dtype), A, B) * scale


@register("optimizer", "eggroll", paper="Evolution Strategies at the Hyperscale", arxiv="2511.16652")
class EGGROLL(ES):
    """ES with rank-r perturbations ``A B^T / sqrt(r)`` of every 2-D parameter.

    Args:
        params: parameters or parameter groups (``sigma`` and ``rank`` may differ per group).
        base_optimizer: outer optimizer (class, instance or registry spec), default SGD.
        lr: outer learning rate; None = 1e-3. With an instance as base_optimizer, its own.
        sigma (sigma): noise scale, default 1e-3.
        rank (r): rank of each matrix perturbation, default 1.
        population (N): members per step (even), default 64.
        weight_decay: handed to the outer optimizer when given.
        fitness_shaping: ``"zscore"`` (default, the reference's), ``"centered_rank"``, ``"none"``.
        seed: seed of the optimizer's noise generator.
        base_kwargs: other keyword arguments of the outer optimizer.
    """

    default_lr = 1e-3  # torch.optim.SGD's; the reference has no default
    default_weight_decay = None

    def __init__(self, params: Iterable, base_optimizer: Any = torch.optim.SGD, *,
                 lr: float | None = None, sigma: float = 1e-3, rank: int = 1, population: int = 64,
                 weight_decay: float | None = None, fitness_shaping: str = "zscore", seed: int = 0,
                 base_kwargs: dict | None = None):
        check_int("rank", rank, minimum=1)
        super().__init__(params, base_optimizer, lr=lr, sigma=sigma, population=population,
                         weight_decay=weight_decay, antithetic=True,
                         fitness_shaping=fitness_shaping, seed=seed, base_kwargs=base_kwargs)
        for group in self.param_groups:
            group.setdefault("rank", rank)
            check_int("rank", group["rank"], minimum=1)
        self.defaults["rank"] = rank

    def _noise(self, p: Tensor, group: dict) -> Any:
        if p.dim() != 2:
            return super()._noise(p, group)
        out_dim, in_dim = p.shape
        rank = check_int("rank", group["rank"], minimum=1)
        factors = torch.randn((self.num_noise, out_dim + in_dim, rank), generator=self.generator,
                              device=self.generator.device, dtype=p.dtype).to(p.device)
        return factors[:, :out_dim], factors[:, out_dim:]  # A (M, out, r), B (M, in, r)

    def _member_params(self, p: Tensor, noise: Any, signs: Tensor, group: dict) -> Any:
        if p.dim() != 2:
            return super()._member_params(p, noise, signs, group)
        A, B = noise
        scale = signs * group["sigma"] / math.sqrt(A.shape[-1])  # s_i sigma / sqrt(r), (N,)
        A_members = A.repeat_interleave(2, dim=0) * scale.view(-1, 1, 1)  # (N, out, r)
        return LowRankBatch(weight=p.detach(), A=A_members, B=B.repeat_interleave(2, dim=0))

    def _direction(self, p: Tensor, noise: Any, coef: Tensor, group: dict) -> Tensor:
        if p.dim() == 2:
            A, B = noise
            return lowrank_direction(A, B, coef, sigma=group["sigma"], population=self.population)
        # sqrt(N) * mean_i(f~_i s_i sigma eps_k(i)) = sigma / sqrt(N) * sum_k c_k eps_k
        return torch.tensordot(coef.to(noise.dtype), noise, dims=1) * (
            group["sigma"] / math.sqrt(self.population))


__all__ = ["EGGROLL", "lowrank_direction"]
