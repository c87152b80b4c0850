"""Participation models: who takes part in each round (the server never sees the rates p_i).

Paper: ``bernoulli``, ``markov``, ``cyclic`` from "A Lightweight Method for Tackling Unknown
Participation Statistics in Federated Averaging", Wang & Ji, arXiv 2306.03401 (FedAU; reference
code IBM/fedau); ``uniform`` from "Communication-Efficient Learning of Deep Networks from
Decentralized Data", McMahan et al., arXiv 1602.05629 (FedAvg); ``stragglers`` from "Tackling the
Unlimited Staleness in Federated Learning with Intertwined Data and Device Heterogeneities",
Wang & Gao, arXiv 2309.13536.

The model: client i has a true rate p_i in (0, 1] (``probabilities``, N entries); each round every
model decides which clients are active. Semantics of ``bernoulli``, ``markov`` and ``cyclic``
follow IBM/fedau ``util/util.py`` (``WorkerSampler``); all three have long-run participation
frequency p_i and mean interval 1/p_i.

- ``bernoulli``: each round client i joins independently with probability p_i.
- ``markov`` (q = 0.05): a two-state chain per client, ``P(off -> on) = q``,
  ``P(on -> off) = q (1/p_i - 1)``; if that exceeds 1 it is set to 1 and q is divided by the old
  value. The first state is drawn from Bernoulli(p_i); the stationary P(on) is p_i. Small q =
  long on/off bursts.
- ``cyclic`` (period C = 100): ``on = max(1, round(C p_i))`` rounds on, ``off = max(1, C - on)``
  rounds off, starting off with a countdown drawn uniformly from {0, ..., off - 1}.
- ``uniform``: exactly M of the N clients, drawn without replacement (classic FedAvg sampling),
  so p_i = M/N.
- ``stragglers``: Bernoulli participation, and each participant's upload arrives ``delay_i``
  rounds late, ``delay_i ~ Poisson(slowness_i)``. The simulator drops uploads later than its
  deadline and aggregates the others, stale, in the round they arrive.

Intuition: the same p_i can come as independent coin flips, in bursts or in blocks; an estimator
of 1/p_i (FedAU) must work for all of them, and the bursty ones are the harder test.

Where it departs from Bernoulli participation: ``markov`` and ``cyclic`` keep the long-run
frequency p_i but correlate consecutive rounds; ``uniform`` fixes the number of participants each
round; ``stragglers`` adds upload delays.

``sample(round, generator)`` returns ``(active (N,) bool, delay (N,) long)``; delay is 0 for
every model but ``stragglers``. :func:`heterogeneous_rates` draws data-correlated rates p_i, which
is what makes plain FedAvg converge to a biased point.

Choices:
- The defaults q = 0.05 and C = 100 are IBM/fedau's (``markov-0.05``, ``cyclic-100``).
- Straggler delays are Poisson(slowness_i) rounds (a lab choice); only participants are delayed.
- :func:`make_participation` builds ``uniform`` with M = max(1, round(mean(p) N)) unless
  ``num_sampled`` is given.
- :func:`heterogeneous_rates` is log-normal around ``mean`` (``p_i = clip(mean exp(spread s_i -
  spread^2/2), p_min, 1)``, s_i a standardized label score), not IBM/fedau's Dirichlet formula:
  ``spread`` sets the ratio between the most and least active clients directly (0 = equal rates).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_range, check_tensor
from lab.registry import register

_FEDAU = "A Lightweight Method for Tackling Unknown Participation Statistics in Federated Averaging"


def _check_rates(probabilities: Any) -> torch.Tensor:
    p = check_tensor("probabilities", torch.as_tensor(probabilities, dtype=torch.float64, device="cpu"), ndim=1, finite=True)
    if p.numel() == 0 or (p <= 0).any() or (p > 1).any():
        raise ValueError("probabilities must be a non-empty vector with entries in (0, 1]")
    return p


def heterogeneous_rates(label_dist: torch.Tensor, mean: float = 0.3, spread: float = 1.0, *,
                        p_min: float = 0.02, generator: torch.Generator) -> torch.Tensor:
    """Data-correlated participation rates p_i (N,).

    Each label (or group) l gets a propensity ``m_l ~ N(0, 1)``; client i's score
    ``s_i = sum_l pi_il m_l`` (pi_i = its label histogram) is standardized over clients and
    ``p_i = clip(mean * exp(spread * s_i - spread^2 / 2), p_min, 1)``. ``spread = 0`` gives equal
    rates; larger spread, a wider ratio between the most and least active clients.
    """
    check_range("mean", mean, 0.0, 1.0, lo_open=True)
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    m = torch.randn(label_dist.shape[1], generator=generator, dtype=torch.float64, device="cpu")
    s = label_dist.to(dtype=torch.float64, device="cpu") @ m  # (N,)
    s = (s - s.mean()) / s.std().clamp_min(1e-12) if s.numel() > 1 else torch.zeros_like(s)
    return (mean * torch.exp(spread * s - spread**2 / 2)).clamp(p_min, 1.0)


class Participation:
    """Base: true rates ``probabilities`` (N,), ``sample(round, generator)``, ``state_dict()``."""

    def __init__(self, probabilities: Any):
        self.probabilities = _check_rates(probabilities)

    @property
    def num_clients(self) -> int:
        return int(self.probabilities.numel())

    def sample(self, round: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _no_delay(self) -> torch.Tensor:
        return torch.zeros(self.num_clients, dtype=torch.long, device="cpu")

    def state_dict(self) -> dict[str, Any]:
        return {"probabilities": self.probabilities.clone()}


@register("participation", "bernoulli", paper=_FEDAU, arxiv="2306.03401")
class Bernoulli(Participation):
    """Client i joins each round independently with probability p_i."""

    def sample(self, round, generator):
        active = torch.rand(self.num_clients, generator=generator, dtype=torch.float64, device="cpu") < self.probabilities
        return active, self._no_delay()


@register("participation", "markov", paper=_FEDAU, arxiv="2306.03401")
class Markov(Participation):
    """Two-state on/off chain per client with stationary P(on) = p_i (q = P(off -> on))."""

    def __init__(self, probabilities: Any, q: float = 0.05):
        super().__init__(probabilities)
        q = check_range("q", q, 0.0, 1.0, lo_open=True)
        off = q * (1.0 / self.probabilities - 1.0)  # P(on -> off)
        self.p_on = torch.where(off > 1, q / off, torch.full_like(off, q))  # (N,) P(off -> on)
        self.p_off = off.clamp(max=1.0)
        self.q = q
        self.state: torch.Tensor | None = None

    def sample(self, round, generator):
        u = torch.rand(self.num_clients, generator=generator, dtype=torch.float64, device="cpu")
        if self.state is None:
            self.state = u < self.probabilities
        else:
            self.state = torch.where(self.state, u >= self.p_off, u < self.p_on)
        return self.state.clone(), self._no_delay()

    def state_dict(self):
        return {**super().state_dict(), "q": self.q, "state": None if self.state is None else self.state.clone()}


@register("participation", "cyclic", paper=_FEDAU, arxiv="2306.03401")
class Cyclic(Participation):
    """Blocks of round(C p_i) rounds on and C - on rounds off, with a random phase."""

    def __init__(self, probabilities: Any, period: int = 100):
        super().__init__(probabilities)
        self.period = check_int("period", period, minimum=2)
        self.on_rounds = torch.clamp(torch.round(period * self.probabilities).long(), min=1)
        self.off_rounds = torch.clamp(period - self.on_rounds, min=1)
        self.active: torch.Tensor | None = None
        self.countdown: torch.Tensor | None = None

    def sample(self, round, generator):
        if self.active is None:
            self.active = torch.zeros(self.num_clients, dtype=torch.bool, device="cpu")
            u = torch.rand(self.num_clients, generator=generator, dtype=torch.float64, device="cpu")
            self.countdown = (u * self.off_rounds).long()  # uniform in {0, ..., off - 1}
        switch = self.countdown == 0
        self.active = torch.where(switch, ~self.active, self.active)
        self.countdown = torch.where(switch, torch.where(self.active, self.on_rounds, self.off_rounds),
                                     self.countdown) - 1
        return self.active.clone(), self._no_delay()

    def state_dict(self):
        return {**super().state_dict(), "period": self.period,
                "active": None if self.active is None else self.active.clone(),
                "countdown": None if self.countdown is None else self.countdown.clone()}


@register("participation", "uniform", paper="Communication-Efficient Learning of Deep Networks from "
          "Decentralized Data", arxiv="1602.05629")
class Uniform(Participation):
    """Exactly ``num_sampled`` of ``num_clients`` clients each round, without replacement (p_i = M/N)."""

    def __init__(self, num_clients: int, num_sampled: int):
        check_int("num_clients", num_clients, minimum=1)
        check_int("num_sampled", num_sampled, minimum=1)
        if num_sampled > num_clients:
            raise ValueError(f"num_sampled must be <= num_clients, got {num_sampled} > {num_clients}")
        super().__init__(torch.full((num_clients,), num_sampled / num_clients, dtype=torch.float64, device="cpu"))
        self.num_sampled = num_sampled

    def sample(self, round, generator):
        chosen = torch.randperm(self.num_clients, generator=generator, device="cpu")[:self.num_sampled]
        active = torch.zeros(self.num_clients, dtype=torch.bool, device="cpu")
        active[chosen] = True
        return active, self._no_delay()


@register("participation", "stragglers", paper="Tackling the Unlimited Staleness in Federated Learning with "
          "Intertwined Data and Device Heterogeneities", arxiv="2309.13536")
class Stragglers(Participation):
    """Bernoulli(p_i) participation; participant i's upload is ``Poisson(slowness_i)`` rounds late.

    Args:
        probabilities: (N,) p_i.
        slowness: (N,) mean delay of each client in rounds, or one number for all.
    """

    def __init__(self, probabilities: Any, slowness: Any = 1.0):
        super().__init__(probabilities)
        slowness = torch.as_tensor(slowness, dtype=torch.float64, device="cpu").expand(self.num_clients).clone()
        if not torch.isfinite(slowness).all() or (slowness < 0).any():
            raise ValueError("slowness must be finite and >= 0")
        self.slowness = slowness

    def sample(self, round, generator):
        active = torch.rand(self.num_clients, generator=generator, dtype=torch.float64, device="cpu") < self.probabilities
        delay = torch.poisson(self.slowness, generator=generator).long()
        return active, torch.where(active, delay, torch.zeros_like(delay))

    def state_dict(self):
        return {**super().state_dict(), "slowness": self.slowness.clone()}


def make_participation(name: str, probabilities: torch.Tensor, **kwargs: Any) -> Participation:
    """Build participation model ``name`` (a registry spec) for rates ``probabilities``."""
    from lab.registry import make, parse_spec

    base, spec_kwargs = parse_spec(name)
    kwargs = {**spec_kwargs, **kwargs}
    if base == "uniform":
        rates = torch.as_tensor(probabilities, dtype=torch.float64, device="cpu")
        n = int(rates.numel())
        m = kwargs.pop("num_sampled", max(1, round(float(rates.mean()) * n)))
        return make("participation", base, n, m, **kwargs)
    return make("participation", base, probabilities, **kwargs)


__all__ = ["Participation", "Bernoulli", "Markov", "Cyclic", "Uniform", "Stragglers",
           "heterogeneous_rates", "make_participation"]
