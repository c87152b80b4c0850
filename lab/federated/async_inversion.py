"""Asynchronous FL with stale updates, and the server-side de-staling by gradient inversion.

Paper: "Tackling the Unlimited Staleness in Federated Learning with Intertwined Data and Device
Heterogeneities", Wang & Gao, arXiv 2309.13536 (published as "Tackling Intertwined Data and
Device Heterogeneities in Federated Learning with Unlimited Staleness").

Setting. Client i pulled ``x^{t - tau}``, trained, and its update ``Delta_i(x^{t-tau})`` reaches the
server at round t, tau rounds stale. When slowness correlates with data (slow clients own some
classes), the usual fixes -- down-weighting stale updates by ``s(tau) = (1 + tau)^{-a}``
(FedAsync, Xie et al., arXiv:1903.03934) -- starve exactly those classes.

The update: the paper's idea is to *convert* a stale update into a fresh one. The server
estimates the client's data D^_i from its stale updates by gradient inversion, then computes
``Delta~_i = LocalTrain(x^t, D^_i)`` and aggregates it instead. Here:

    D^_i = argmin_D  sum_{(b, Delta) in memory_i} ||LocalTrain(b, D) - Delta||^2 / ||Delta||^2  +  l2 * mean(X^2)
    LocalTrain(b, D): K steps of full-batch GD with the clients' lr from b on D (unrolled, differentiable)
    Delta~_i = LocalTrain(x^t, D^_i)

where D = (X, labels) is a synthetic data set, b a base model a client trained from, K and the lr
those of the clients' last local round, and l2 the weight of the input-norm prior.
``memory_i`` holds the last ``memory`` (base model, update) pairs received from client i (one
pair does not identify a linear model's curvature; several do). D^_i = ``num_synthetic`` inputs
and labels (real targets for least squares, sigmoid / softmax of free logits for logistic /
softmax classification), optimized with Adam, warm-started from the previous estimate (the
paper reuses the previous reconstruction as initialization).

Server step (all modes): ``x <- x + eta_g sum_i w_i Delta'_i`` with ``w_i = n_i / sum_j n_j``
over the updates arriving this round and

- ``correction="inversion"``: ``Delta'_i = Delta~_i`` when tau >= ``min_staleness``, else Delta_i;
- ``correction="discount"``:  ``Delta'_i = (1 + tau)^{-a} Delta_i`` (the staleness-discount baseline);
- ``correction="none"``:      ``Delta'_i = Delta_i``.

Intuition: a stale update says what the client's data wants, but from an old model; the data
estimate lets the server ask the same question again from today's model.

Where it departs from FedAsync: instead of discounting a late update by s(tau), the server
recomputes it at the current model from estimated data. ``correction="discount"`` is the
staleness-discount baseline as a weighted average of the round's arrivals (FedAsync itself mixes
one update at a time, ``x <- (1 - a s(tau)) x + a s(tau) x_i``).

Choices the paper leaves open (documented, [unverified] in the spec):
- The matching loss is the relative squared error of the whole update (direction and length)
  rather than a cosine; no sparsification.
- The inversion runs whenever an update is at least ``min_staleness`` rounds old (no switching
  back rule); fresher updates are aggregated as they are.
- A stale update whose base model is older than the stored versions (``max_versions``) falls
  back to the discount rule.
- Needs the problem's loss (``setup(..., problem)``).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import torch

from lab.checks import check_choice, check_int, check_nonneg, check_positive
from lab.federated.base import Aggregator, weighted_step
from lab.registry import register


@register("aggregator", "async_inversion", paper="Tackling the Unlimited Staleness in Federated Learning with "
          "Intertwined Data and Device Heterogeneities", arxiv="2309.13536")
class AsyncInversion(Aggregator):
    """Asynchronous aggregation that de-stales late updates by gradient inversion.

    Args:
        correction: ``"inversion"``, ``"discount"`` or ``"none"``.
        staleness_exponent: a in ``(1 + tau)^{-a}`` (discount mode and fallback).
        num_synthetic: m, synthetic examples per client.
        inversion_steps, inversion_lr: Adam iterations and step size of the inversion.
        l2: weight of the input-norm prior.
        memory: (base, update) pairs kept per client for the inversion.
        min_staleness: updates at least this stale are converted.
        max_versions: global models kept for looking up base models.
        seed: seeds the synthetic-data initialization.
    """

    def __init__(self, *, correction: str = "inversion", staleness_exponent: float = 0.5,
                 num_synthetic: int = 16, inversion_steps: int = 100, inversion_lr: float = 0.05,
                 l2: float = 1e-3, memory: int = 4, min_staleness: int = 1, max_versions: int = 64,
                 server_lr: float = 1.0, batch_size: int | None = None, seed: int = 0):
        super().__init__(server_lr=server_lr, batch_size=batch_size)
        self.correction = check_choice("correction", correction, ("inversion", "discount", "none"))
        self.staleness_exponent = check_nonneg("staleness_exponent", staleness_exponent)
        self.num_synthetic = check_int("num_synthetic", num_synthetic, minimum=1)
        self.inversion_steps = check_int("inversion_steps", inversion_steps, minimum=1)
        self.inversion_lr = check_positive("inversion_lr", inversion_lr)
        self.l2 = check_nonneg("l2", l2)
        self.memory = check_int("memory", memory, minimum=1)
        self.min_staleness = check_int("min_staleness", min_staleness, minimum=1)
        self.max_versions = check_int("max_versions", max_versions, minimum=1)
        self.seed = seed
        self.problem = None

    def setup(self, num_clients, dim, problem=None, *, dtype=torch.float64, device=None):
        self.problem = problem
        return super().setup(num_clients, dim, problem, dtype=dtype, device=device)

    def _init_state(self, dtype: torch.dtype) -> None:
        self.versions: dict[int, torch.Tensor] = {}  # round -> global model of that round
        self.pairs: dict[int, deque] = {}  # client -> deque of (base model, update)
        self.estimates: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # client -> (X^, label params)
        self.converted = 0
        self._generator = torch.Generator(device="cpu").manual_seed(self.seed)  # draws on the CPU, then moved

    # ---- synthetic data ------------------------------------------------------------------
    def _labels(self, params: torch.Tensor) -> torch.Tensor:
        kind = self.problem.kind
        if kind == "logistic":
            return torch.sigmoid(params)  # (m,) soft labels in (0, 1)
        if kind == "classification":
            return torch.softmax(params, dim=-1)  # (m, C) soft labels
        return params  # (m,) real targets

    def _init_estimate(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        m, feat = self.num_synthetic, tuple(self.problem.X.shape[2:])
        X = 0.5 * torch.randn((m, *feat), generator=self._generator, dtype=torch.float64, device="cpu").to(dtype=dtype, device=self.device)
        if self.problem.kind == "classification":
            labels = 0.1 * torch.randn(m, self.problem.label_dist.shape[1], generator=self._generator,
                                       dtype=torch.float64, device="cpu").to(dtype=dtype, device=self.device)
        else:
            labels = 0.1 * torch.randn(m, generator=self._generator, dtype=torch.float64, device="cpu").to(dtype=dtype, device=self.device)
        return X, labels

    def local_train(self, base: torch.Tensor, X: torch.Tensor, labels: torch.Tensor, *,
                    create_graph: bool = False) -> torch.Tensor:
        """``LocalTrain(base, D) - base``: K full-batch GD steps with the clients' lr on (X, labels)."""
        loss_fn, mask = self.problem.loss_fn, torch.ones(X.shape[0], dtype=X.dtype, device=X.device)
        y = base.clone().requires_grad_(True) if not base.requires_grad else base
        start = y
        for _ in range(self.local_steps):
            (g,) = torch.autograd.grad(loss_fn(y, X, self._labels(labels), mask), y, create_graph=create_graph)
            y = y - self.local_lr * g
        return y - start

    def invert(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Estimate client ``client``'s data from its stored (base, update) pairs; returns (X^, label params)."""
        if self.problem is None:
            raise RuntimeError("async_inversion needs setup(num_clients, dim, problem) with the problem's loss")
        pairs = list(self.pairs[client])
        X, labels = self.estimates.get(client) or self._init_estimate(pairs[0][0].dtype)
        X, labels = X.clone().requires_grad_(True), labels.clone().requires_grad_(True)
        opt = torch.optim.Adam([X, labels], lr=self.inversion_lr)
        for _ in range(self.inversion_steps):
            opt.zero_grad()
            loss = self.l2 * (X**2).mean()
            for base, delta in pairs:
                with torch.enable_grad():
                    pred = self.local_train(base.detach().requires_grad_(True), X, labels, create_graph=True)
                loss = loss + ((pred - delta) ** 2).sum() / (delta**2).sum().clamp_min(1e-30) / len(pairs)
            loss.backward()
            opt.step()
        estimate = (X.detach(), labels.detach())
        self.estimates[client] = estimate
        return estimate

    # ---- server step ---------------------------------------------------------------------
    def aggregate(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], round: int, *,
                  staleness: Mapping[int, int] | None = None) -> torch.Tensor:
        self._require_setup()
        staleness = dict(staleness or {})
        self.versions[round] = x.clone()
        for old in [r for r in self.versions if r < round - self.max_versions]:
            del self.versions[old]
        ids, deltas, n = self._stack(x, updates, num_samples)
        w = n / n.sum() if len(ids) else n
        rows = []
        for cid, delta in zip(ids.tolist(), deltas):
            tau = int(staleness.get(cid, 0))
            base = self.versions.get(round - tau)
            if base is not None:
                self.pairs.setdefault(cid, deque(maxlen=self.memory)).append((base, delta.clone()))
            if tau < self.min_staleness or self.correction == "none":
                rows.append(delta)
            elif self.correction == "inversion" and base is not None and self.local_steps is not None:
                X, labels = self.invert(cid)
                with torch.enable_grad():
                    fresh = self.local_train(x, X, labels).detach()
                self.converted += 1
                rows.append(fresh)
            else:  # discount, or inversion without the base model
                rows.append((1.0 + tau) ** (-self.staleness_exponent) * delta)
        self._record(ids, w)
        return weighted_step(x, torch.stack(rows) if rows else deltas, w, self.server_lr)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "correction": self.correction, "versions": sorted(self.versions),
                "estimates": {k: (v[0].clone(), v[1].clone()) for k, v in self.estimates.items()},
                "memory_sizes": {k: len(v) for k, v in self.pairs.items()}, "converted": self.converted}
