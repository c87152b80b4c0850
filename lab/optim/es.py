"""OpenAI-style evolution strategies: a gradient estimate from the fitness of perturbed copies.

Paper: "Evolution Strategies as a Scalable Alternative to Reinforcement Learning", Salimans et al.
(with Ho, Chen, Sidor, Sutskever), arXiv 1703.03864 (reference code:
openai/evolution-strategies-starter).
In the lab it is the full-rank baseline of EGGROLL (``lab.optim.eggroll``).

The update: ES ascends the Gaussian-smoothed fitness ``F_sigma(theta) = E_eps[F(theta + sigma
eps)]``, whose gradient is ``E[F(theta + sigma eps) eps] / sigma``. Per step, population N:

    eps_k ~ N(0, I)                       k = 1..N/2 (antithetic) or 1..N
    member i: theta_i = theta + s_i sigma eps_k(i)       antithetic: pair k = i // 2,
                                                         s_i = +1 (i even), -1 (i odd)
    f_i   = F(theta_i)                    one call of fitness(params_batch) for all members
    w_i   = centered_rank(f)_i            rank over the N values / (N - 1) - 1/2, in [-1/2, 1/2]
    g_hat = (1/N) sum_i w_i s_i eps_k(i)  = sum_k (w_k+ - w_k-) eps_k / N   (antithetic)
    theta <- B(theta, grad = -g_hat)      base optimizer B (Adam) minimizes -F; its coupled
                                          weight decay adds l2coeff * theta to the "gradient"

Symbols: F = fitness (higher is better), sigma = noise scale, s_i = antithetic sign, w = shaped
fitness, eps_k = a standard Gaussian draw of theta's shape, g_hat = the gradient estimate. As in the reference code the estimate has no 1/sigma (it is absorbed in the step
size): with raw fitness, E[g_hat] = sigma grad F_sigma(theta), which for a quadratic F is exactly
sigma grad F(theta). Antithetic pairs cancel the even part of F; ranks make the step invariant to
monotone transformations of the fitness and robust to outliers.

Where it departs from back-propagation with the base optimizer B (its parent here): the gradient
is not back-propagated but estimated from N fitness values; B only applies it. ES is itself the parent
(the full-rank baseline) of EGGROLL.

API (DESIGN.md): ``step(fitness)`` where ``fitness(params_batch)`` evaluates the whole
population at once and returns one number per member, shape (N,). ``params_batch`` is a list
aligned with :attr:`ES.params` (every group's parameters in order), each entry of shape
(N, *p.shape). :func:`population_call` runs an ``nn.Module`` once per member, batched with
``torch.vmap`` and ``torch.func.functional_call``::

    def fitness(batch):
        out = population_call(model, opt.params, batch, x)      # (N, B, out)
        return -((out - y) ** 2).mean(dim=(1, 2))                 # (N,)
    opt.step(fitness)

Choices (where the reference is silent or differs):
- Defaults follow the reference humanoid config: sigma 0.02, Adam lr 0.01, l2 coefficient 0.005
  (``weight_decay`` of the base optimizer), centered ranks, antithetic pairs. The reference
  evaluates about 10,000 episodes per step; the lab's default population is 64 (a laptop).
- Ties in the centered ranks are broken by position (stable argsort; the reference's argsort
  leaves ties in an unspecified order). So a constant fitness still gives a tiny update under
  centered ranks (each pair differs by 1/(N-1)); z-scores give exactly zero.
- ``fitness_shaping`` may also be ``"zscore"`` (EGGROLL's) or ``"none"`` (raw fitness, the
  unbiased estimator used by the tests).
- Noise is drawn from the optimizer's own ``torch.Generator`` (``seed``); its state is part of
  ``state_dict()``, so a resumed run draws the same noise. The reference's shared noise table is
  an optimization of the distributed setting, not needed here.
- ``step`` writes ``-g_hat`` into ``p.grad`` (left there for inspection) and returns the
  fitness values ``f`` (N,).
- ``step`` does not use gradients; sparse or missing gradients play no role.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from lab.checks import check_choice, check_int, check_positive
from lab.optim.sam import WrapperOptimizer
from lab.registry import register


# ---- functional core --------------------------------------------------------------------------
def centered_ranks(fitness: Tensor) -> Tensor:
    """``rank / (N - 1) - 0.5`` in [-0.5, 0.5]; ties broken by position. (N,) -> (N,)."""
    n = fitness.numel()
    ranks = torch.empty(n, dtype=torch.float64, device=fitness.device)
    ranks[fitness.argsort(stable=True)] = torch.arange(n, dtype=torch.float64, device=fitness.device)
    return ranks / max(n - 1, 1) - 0.5


def zscore(fitness: Tensor, eps: float = 1e-5) -> Tensor:
    """``(f - mean f) / sqrt(var f + eps)`` (population variance; EGGROLL's shaping)."""
    f = fitness.double()
    return (f - f.mean()) / torch.sqrt(f.var(unbiased=False) + eps)


SHAPINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "centered_rank": centered_ranks,
    "zscore": zscore,
    "none": lambda f: f.double(),
}


def pair_coefficients(weights: Tensor, num_noise: int, antithetic: bool) -> Tensor:
    """``c_k = sum_{i: k(i) = k} w_i s_i`` for each noise draw k. (N,) -> (num_noise,)."""
    if antithetic:
        w = weights.view(num_noise, 2)  # member 2k: +eps_k, member 2k+1: -eps_k
        return w[:, 0] - w[:, 1]
    return weights


# ---- populations of parameters ------------------------------------------------------------------
@dataclass
class LowRankBatch:
    """A population of matrices ``W + A_i B_i^T`` kept in factored form (EGGROLL's members).

    ``weight`` (out, in) is shared; ``A`` (N, out, r) already holds each member's sign and scale
    ``s_i sigma / sqrt(r)``; ``B`` (N, in, r). :meth:`materialize` builds the (N, out, in) tensor,
    which the low-rank forward of :func:`population_call` avoids.
    """

    weight: Tensor
    A: Tensor
    B: Tensor

    def __len__(self) -> int:
        return self.A.shape[0]

    def materialize(self) -> Tensor:
        """``W + A_i B_i^T`` for every member, (N, out, in)."""
        return self.weight + self.A @ self.B.transpose(1, 2)

    def matmul(self, x: Tensor) -> Tensor:
        """``x_i W_i^T`` per member, x (N, ..., in) -> (N, ..., out), without forming W_i:
        ``x W^T + (x B_i) A_i^T`` costs O(r (in + out)) per row on top of the shared matmul."""
        return lowrank_matmul(x, self.weight, self.A, self.B)


def lowrank_matmul(x: Tensor, weight: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``x W^T + (x b) a^T``: a linear layer with a rank-r perturbation, factors kept apart.

    x (..., in), weight (out, in), a (..., out, r), b (..., in, r) with matching leading dims.
    """
    return x @ weight.T + (x @ b) @ a.transpose(-1, -2)


def _lowrank_hook(a: Tensor, b: Tensor):
    """Forward hook adding one member's ``x B A^T`` to an nn.Linear output ``x W^T + bias``."""
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return output + (inputs[0] @ b) @ a.transpose(-1, -2)  # (..., in) (in, r) (r, out)
    return hook


def population_call(model: nn.Module, params: Sequence[Tensor], params_batch: Sequence[Any],
                    *inputs: Any, batched_inputs: bool = False,
                    model_kwargs: dict[str, Any] | None = None) -> Any:
    """Run ``model(*inputs)`` once per population member; outputs get a leading (N,) dim.

    Args:
        model: the module whose parameters ``params`` (an optimizer's :attr:`ES.params`) are.
        params_batch: what the optimizer hands to ``fitness``: per parameter either a tensor
            (N, *p.shape) or a :class:`LowRankBatch`.
        inputs: the model's inputs, shared by all members, or with a leading (N,) dim per member
            when ``batched_inputs`` (e.g. one environment observation per member).
        model_kwargs: keyword arguments of the forward, shared by all members (e.g.
            ``{"use_cache": False}`` for a Hugging Face model).

    Members are batched with ``torch.vmap`` over ``torch.func.functional_call``. A
    :class:`LowRankBatch` on an ``nn.Linear`` weight uses the low-rank forward
    ``x W^T + (x B_i) A_i^T`` (a forward hook): W is shared by all members and no (out, in)
    perturbation is formed. A LowRankBatch on any other parameter is materialized.
    Parameters of ``model`` not in ``params`` keep their values. Buffers are not batched: call
    ``model.eval()`` for BatchNorm; models that draw random numbers (dropout) are not supported.
    """
    if len(params) != len(params_batch):
        raise ValueError(f"params_batch must have one entry per parameter ({len(params)}), "
                         f"got {len(params_batch)}")
    names = {id(p): n for n, p in model.named_parameters()}
    owners = {id(m.weight): m for m in model.modules()
              if isinstance(m, nn.Linear) and isinstance(getattr(m, "weight", None), Tensor)}
    full, hooked = {}, []
    for p, entry in zip(params, params_batch):
        if id(p) not in names:
            raise ValueError("params must all be parameters of model")
        if isinstance(entry, LowRankBatch) and id(p) in owners:
            hooked.append((owners[id(p)], entry))
        else:
            full[names[id(p)]] = entry.materialize() if isinstance(entry, LowRankBatch) else entry
    factors = [(entry.A, entry.B) for _, entry in hooked]
    modules = [module for module, _ in hooked]

    def member(full_params: dict, member_factors: list, *xs: Any) -> Any:
        handles = [m.register_forward_hook(_lowrank_hook(a, b))
                   for m, (a, b) in zip(modules, member_factors)]
        try:
            return torch.func.functional_call(model, full_params, xs, model_kwargs or {})
        finally:
            for handle in handles:
                handle.remove()

    in_dims = (0, 0, *[0 if batched_inputs else None for _ in inputs])
    return torch.vmap(member, in_dims=in_dims)(full, factors, *inputs)


# ---- the optimizer ----------------------------------------------------------------------------
@register("optimizer", "es", paper="Evolution Strategies as a Scalable Alternative to Reinforcement Learning",
          arxiv="1703.03864")
class ES(WrapperOptimizer):
    """OpenAI-style ES: antithetic Gaussian perturbations, centered-rank fitness, Adam outer step.

    Args:
        params: parameters or parameter groups (``sigma`` may differ per group).
        base_optimizer: outer optimizer (class, instance or registry spec), default Adam.
        lr: outer learning rate; None = 0.01 (the reference's Adam stepsize). With a
            base_optimizer instance, lr and weight_decay are the instance's own.
        sigma (sigma): noise scale, default 0.02.
        population (N): members per step, default 64 (even when antithetic).
        weight_decay: the reference's l2 coefficient, coupled into the outer gradient;
            None = 0.005.
        antithetic: mirrored pairs theta +- sigma eps (default True).
        fitness_shaping: ``"centered_rank"`` (default), ``"zscore"`` or ``"none"``.
        seed: seed of the optimizer's noise generator.
        base_kwargs: other keyword arguments of the outer optimizer.
    """

    requires_fitness = True
    default_lr = 0.01  # the reference's Adam stepsize
    default_weight_decay: float | None = 0.005  # the reference's l2coeff

    def __init__(self, params: Iterable, base_optimizer: Any = torch.optim.Adam, *,
                 lr: float | None = None, sigma: float = 0.02, population: int = 64,
                 weight_decay: float | None = None, antithetic: bool = True,
                 fitness_shaping: str = "centered_rank", seed: int = 0,
                 base_kwargs: dict | None = None):
        check_positive("sigma", sigma)
        check_int("population", population, minimum=2)
        if not isinstance(antithetic, bool):
            raise TypeError(f"antithetic must be a bool, got {type(antithetic).__name__}")
        if antithetic and population % 2:
            raise ValueError(f"population must be even with antithetic pairs, got {population}")
        check_choice("fitness_shaping", fitness_shaping, list(SHAPINGS))
        check_int("seed", seed)
        if base_kwargs is not None and not isinstance(base_kwargs, dict):
            raise TypeError(f"base_kwargs must be a dict, got {type(base_kwargs).__name__}")
        settings = {"lr": lr, "weight_decay": weight_decay, **(base_kwargs or {})}
        if not isinstance(base_optimizer, torch.optim.Optimizer):  # an instance brings its own
            settings["lr"] = self.default_lr if lr is None else lr
            settings["weight_decay"] = self.default_weight_decay if weight_decay is None else weight_decay
        super().__init__(params, base_optimizer, {"sigma": sigma}, settings)
        self.population = population
        self.antithetic = antithetic
        self.fitness_shaping = fitness_shaping
        self.generator = torch.Generator(device=self.params[0].device).manual_seed(seed)

    @property
    def params(self) -> list[Tensor]:
        """Every group's parameters, in order: the order of ``params_batch``."""
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def num_noise(self) -> int:
        """Independent noise draws per step: N/2 with antithetic pairs, else N."""
        return self.population // 2 if self.antithetic else self.population

    # ---- pieces a subclass (EGGROLL) replaces ------------------------------------------------
    def _noise(self, p: Tensor, group: dict) -> Any:
        """Noise for one parameter: ``eps`` (M, *p.shape)."""
        eps = torch.randn((self.num_noise, *p.shape), generator=self.generator,
                          device=self.generator.device, dtype=p.dtype)
        return eps.to(p.device)

    def _member_params(self, p: Tensor, noise: Any, signs: Tensor, group: dict) -> Any:
        """``theta + s_i sigma eps_k(i)`` for every member, (N, *p.shape)."""
        eps = noise.repeat_interleave(2, dim=0) if self.antithetic else noise
        return p.detach() + (signs * group["sigma"]).view(-1, *[1] * p.dim()) * eps

    def _direction(self, p: Tensor, noise: Any, coef: Tensor, group: dict) -> Tensor:
        """``g_hat = sum_k c_k eps_k / N`` (no 1/sigma, as in the reference)."""
        return torch.tensordot(coef.to(noise.dtype), noise, dims=1) / self.population

    # ---- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def estimate(self, fitness: Callable[[list], Any]) -> tuple[list[Tensor], Tensor]:
        """Draw a population, evaluate it, return ``(g_hat per parameter, fitness values)``.

        ``g_hat`` is the ascent direction on the fitness; nothing is updated.
        """
        if not callable(fitness):
            raise TypeError("fitness must be a callable: fitness(params_batch) -> (N,) values")
        n = self.population
        signs = torch.tensor([1.0, -1.0] * (n // 2) if self.antithetic else [1.0] * n,
                             dtype=self.params[0].dtype, device=self.params[0].device)
        pairs = [(p, group) for group in self.param_groups for p in group["params"]]
        noise = [self._noise(p, group) for p, group in pairs]
        batch = [self._member_params(p, e, signs, group) for (p, group), e in zip(pairs, noise)]
        values = _check_fitness(fitness(batch), n)
        weights = SHAPINGS[self.fitness_shaping](values)  # (N,)
        coef = pair_coefficients(weights, self.num_noise, self.antithetic)  # (M,)
        directions = [self._direction(p, e, coef, group) for (p, group), e in zip(pairs, noise)]
        return directions, values

    def step(self, fitness: Callable[[list], Any]) -> Tensor:  # type: ignore[override]
        """One ES step: estimate, write ``p.grad = -g_hat``, let the base optimizer step."""
        directions, values = self.estimate(fitness)
        for p, d in zip(self.params, directions):
            p.grad = (-d).to(p.dtype)
        self.base_optimizer.step()
        return values

    def extra_state(self) -> dict[str, Any]:
        return {"rng_state": self.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng_state"])


def _check_fitness(values: Any, population: int) -> Tensor:
    if not isinstance(values, Tensor):
        try:
            values = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"fitness must return a tensor or sequence of numbers, got "
                            f"{type(values).__name__}") from None
    values = values.detach().reshape(-1) if values.dim() == 2 and values.shape[1] == 1 else values.detach()
    if values.shape != (population,):
        raise ValueError(f"fitness must return one number per member, shape ({population},), "
                         f"got {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("fitness returned NaN or Inf for some members")
    return values.double()


__all__ = ["ES", "LowRankBatch", "SHAPINGS", "centered_ranks", "lowrank_matmul",
           "pair_coefficients", "population_call", "zscore"]
