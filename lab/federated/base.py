"""Shared pieces of every federated algorithm: vectorized local SGD, update checks, the base class.

Local training (client side). Client i starts from the model it received, ``y^0 = x``, and takes
K steps ``y^{k+1} = y^k - eta_l d_i(y^k)`` with the direction

    d_i(y) = s * g_i(y; xi) - a * g_i(anchor; xi) + offset_i + mu (y - center)

where ``g_i(.; xi)`` is the minibatch gradient of F_i on a fresh sample xi (the same xi at both
points), ``s`` = ``grad_scale``, ``offset_i`` a per-client constant and ``mu`` a proximal weight.
Plain FedAvg is ``s = 1`` and nothing else; SCAFFOLD's ``offset_i = c - c_i``; Cheng et al.'s
momentum variants use ``s = beta``, ``offset = (1 - beta) g``; their variance-reduced extensions
add the anchor term; ADMM's inexact solver uses the proximal term. The client returns the update
``Delta_i = y^K - x`` and the mean raw gradient along its path, ``(1/K) sum_k g_i(y^k)``.

All M clients of a round train at once: ``torch.func.vmap(torch.func.grad(F_i))`` over the
padded client data of :class:`toy_envs.federated.ClientData` (linear problems supply the same
gradient in closed form, a faster path tested against the vmap one).

Server side. ``aggregate(x, updates, num_samples, round)`` receives ``{client id: Delta_i}`` and
``{client id: n_i}``; :func:`stack_updates` validates them (finite, same shape as x) so that no
NaN or Inf can reach a global model, whatever the caller does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from lab.checks import check_int, check_positive


@dataclass
class LocalResult:
    """What a round of local training returns for M clients."""

    delta: torch.Tensor  # (M, d) y^K - x
    mean_grad: torch.Tensor  # (M, d) (1/K) sum_k g_i(y^k)


def local_sgd(data: Any, x: torch.Tensor, *, steps: int, lr: float, generator: torch.Generator,
              batch_size: int | None = None, grad_scale: float = 1.0, offset: torch.Tensor | None = None,
              anchor: torch.Tensor | None = None, anchor_scale: float = 0.0,
              prox_center: torch.Tensor | None = None, prox_mu: float = 0.0) -> LocalResult:
    """K local steps for every client in ``data`` at once (see the module docstring).

    Args:
        data: a :class:`toy_envs.federated.ClientData` of M clients.
        x: the received model, (d,) shared or (M, d) one per client (a noisy downlink).
        steps: K >= 1. lr: eta_l > 0. generator: draws the minibatches.
        batch_size: minibatch size B per step; None = full local batch (deterministic).
        grad_scale, offset, anchor, anchor_scale, prox_center, prox_mu: the direction's terms.
    """
    check_int("steps", steps, minimum=1)
    check_positive("lr", lr)
    M = len(data)
    y = (x.expand(M, -1) if x.dim() == 1 else x).clone()  # (M, d)
    start = y.clone()
    grad_fn = data.grads  # vmap(grad(F_i)) over clients, or a closed form for linear models
    grad_sum = torch.zeros_like(y)
    for _ in range(steps):
        Xb, yb, mb = data.batch(generator, batch_size)
        g = grad_fn(y, Xb, yb, mb)  # (M, d)
        grad_sum += g
        direction = g if grad_scale == 1.0 else grad_scale * g
        if anchor is not None and anchor_scale != 0.0:
            anchor_b = anchor.expand(M, -1) if anchor.dim() == 1 else anchor
            direction = direction - anchor_scale * grad_fn(anchor_b, Xb, yb, mb)
        if offset is not None:
            direction = direction + offset
        if prox_mu:
            direction = direction + prox_mu * (y - prox_center)
        y = y - lr * direction
    return LocalResult(y - start, grad_sum / steps)


def stack_updates(x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids (M,), deltas (M, d), n (M,))`` in ascending id order, after checking every update.

    Raises ValueError naming the client when an update is not finite or has the wrong shape, or
    a client has no (positive) sample count.
    """
    if not isinstance(updates, Mapping):
        raise TypeError(f"updates must be a dict {{client id: update}}, got {type(updates).__name__}")
    ids = sorted(int(i) for i in updates)
    for i in ids:
        delta = updates[i]
        if not isinstance(delta, torch.Tensor):
            raise TypeError(f"updates[{i}] must be a torch.Tensor, got {type(delta).__name__}")
        if delta.shape != x.shape:
            raise ValueError(f"updates[{i}] must have the model's shape {tuple(x.shape)}, got {tuple(delta.shape)}")
        if i not in num_samples or num_samples[i] <= 0:
            raise ValueError(f"num_samples[{i}] must be a positive count")
    deltas = torch.stack([updates[i] for i in ids]).to(x.dtype) if ids else x.new_zeros(0, x.numel())
    finite = torch.isfinite(deltas).all(1)  # (M,) one check for all updates
    if not bool(finite.all()):
        bad = ids[int((~finite).nonzero()[0])]
        raise ValueError(f"updates[{bad}] contains NaN or Inf")
    n = torch.tensor([float(num_samples[i]) for i in ids], dtype=x.dtype)
    return torch.tensor(ids, dtype=torch.long), deltas, n


class Aggregator:
    """Base of every federated algorithm: a client side and a server side in one object.

    Client side: :meth:`local_updates` (M clients at once, the fast path) and
    :meth:`local_update` (one client, the contract of DESIGN.md; the same code with M = 1).
    Server side: :meth:`aggregate`. :meth:`setup` sizes the state for N clients of dimension d
    (``simulate`` calls it; call it yourself when using the object by hand). The weight each
    accepted update received in the last aggregation is in ``last_weights``.

    Client state that depends on the server hearing from the client (SCAFFOLD's c_i) is
    *proposed* in :meth:`local_updates` and *committed* in :meth:`aggregate` only for the
    clients whose update was accepted, so a dropped update leaves client and server consistent.
    """

    uplink_vectors = 1  # d-vectors a client sends per round (SCAFFOLD also sends Delta c_i)
    downlink_vectors = 1  # d-vectors the server sends per client per round

    def __init__(self, *, server_lr: float = 1.0, batch_size: int | None = None):
        self.server_lr = check_positive("server_lr", server_lr)
        if batch_size is not None:
            check_int("batch_size", batch_size, minimum=1)
        self.batch_size = batch_size
        self.num_clients: int | None = None
        self.dim: int | None = None
        self.alpha: torch.Tensor | None = None  # (N,) objective weights alpha_i
        self.last_weights: dict[int, float] = {}
        self.local_steps: int | None = None  # K and eta_l of the last local round
        self.local_lr: float | None = None

    # ---- setup ---------------------------------------------------------------------------
    def setup(self, num_clients: int, dim: int, problem: Any = None, *,
              dtype: torch.dtype = torch.float64) -> "Aggregator":
        """Size the state for ``num_clients`` clients and models of ``dim`` entries."""
        self.num_clients = check_int("num_clients", num_clients, minimum=1)
        self.dim = check_int("dim", dim, minimum=1)
        if problem is not None:
            self.alpha = problem.weights.to(dtype)
        else:
            self.alpha = torch.full((num_clients,), 1.0 / num_clients, dtype=dtype)
        self._init_state(dtype)
        return self

    def _init_state(self, dtype: torch.dtype) -> None:
        """Allocate server and client state (override)."""

    def _require_setup(self) -> None:
        if self.num_clients is None:
            raise RuntimeError(f"{type(self).__name__}.setup(num_clients, dim) must be called first")

    # ---- client side ---------------------------------------------------------------------
    def local_updates(self, x: torch.Tensor, client_ids: torch.Tensor, data: Any, *, steps: int,
                      lr: float, generator: torch.Generator) -> torch.Tensor:
        """Updates ``Delta_i`` (M, d) of clients ``client_ids`` whose data is ``data``."""
        self.local_steps, self.local_lr = steps, lr
        return local_sgd(data, x, steps=steps, lr=lr, generator=generator,
                         batch_size=self.batch_size).delta

    def local_update(self, x: torch.Tensor, client_id: int, data: Any, *, steps: int, lr: float,
                     generator: torch.Generator) -> torch.Tensor:
        """One client's update ``Delta = x_after - x_before`` (d,)."""
        ids = torch.tensor([int(client_id)])
        return self.local_updates(x, ids, data, steps=steps, lr=lr, generator=generator)[0]

    # ---- server side ---------------------------------------------------------------------
    def aggregate(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], round: int, *,
                  staleness: Mapping[int, int] | None = None) -> torch.Tensor:
        """The next global model from the accepted updates of this round."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything the algorithm keeps, server and clients (override to add state)."""
        return {"server_lr": self.server_lr, "num_clients": self.num_clients, "dim": self.dim}

    def _record(self, ids: torch.Tensor, weights: torch.Tensor) -> None:
        self.last_weights = dict(zip(ids.tolist(), weights.tolist()))


def weighted_step(x: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor,
                  server_lr: float = 1.0) -> torch.Tensor:
    """``x + eta_g sum_i w_i Delta_i`` (the one weighted average of the package). (d,)"""
    if deltas.shape[0] == 0:
        return x.clone()
    return x + server_lr * (weights[:, None] * deltas).sum(0)
