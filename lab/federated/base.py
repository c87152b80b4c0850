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
``{client id: n_i}``; :func:`stack_updates` validates them (finite, same shape as x, every client
id an int in ``[0, N)``) so that no NaN or Inf can reach a global model and no update lands in
another client's memory, whatever the caller does. Client ids given to ``local_updates`` are
checked the same way (:func:`check_client_ids`).

Empty rounds (a choice, the same for every aggregator): a round in which the server accepted no
update leaves the global model unchanged and does not touch server momentum or stored client
updates, as Flower's strategies do (their ``aggregate_fit`` returns no parameters when there are
no results). Only round counters advance (FedAU's participation intervals count that round).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
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


def check_client_ids(name: str, ids: Any, num_clients: int) -> torch.Tensor:
    """``ids`` as a (M,) long tensor of distinct client indices in ``[0, num_clients)``.

    Raises TypeError for non-integer ids (floats, bools) and ValueError naming ``name`` for an id
    out of range (a negative id would silently index from the end) or a repeated id.
    """
    if isinstance(ids, torch.Tensor):
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise TypeError(f"{name} must hold integer client ids, got dtype {ids.dtype}")
        ids = ids.reshape(-1).long()
    else:
        values = list(ids)
        for i in values:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"{name} must hold integer client ids, got {i!r} ({type(i).__name__})")
        ids = torch.tensor([int(i) for i in values], dtype=torch.long, device="cpu")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= num_clients:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} must be client ids in [0, {num_clients}), got {bad}")
        if ids.unique().numel() != ids.numel():
            raise ValueError(f"{name} must not repeat a client id, got {ids.tolist()}")
    return ids


def stack_updates(x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], num_clients: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids (M,), deltas (M, d), n (M,))`` in ascending id order, after checking every update.

    Raises TypeError for a non-integer client id and ValueError naming the client when its id is
    outside ``[0, num_clients)`` (when given), an update is not finite or has the wrong shape, or a
    client has no (positive) sample count.
    """
    if not isinstance(updates, Mapping):
        raise TypeError(f"updates must be a dict {{client id: update}}, got {type(updates).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 1:
        raise ValueError(f"x must be the flat global model, a 1-D tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if num_clients is not None:
        ids = check_client_ids("updates", list(updates), num_clients).sort().values.tolist()
    else:
        ids = sorted(int(i) for i in updates)
    for i in ids:
        delta = updates[i]
        if not isinstance(delta, torch.Tensor):
            raise TypeError(f"updates[{i}] must be a torch.Tensor, got {type(delta).__name__}")
        if delta.shape != x.shape:
            raise ValueError(f"updates[{i}] must have the model's shape {tuple(x.shape)}, got {tuple(delta.shape)}")
        count = num_samples.get(i) if isinstance(num_samples, Mapping) else None
        if isinstance(count, bool) or not isinstance(count, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(count)) or count <= 0:
            raise ValueError(f"num_samples[{i}] must be a positive count, got {count!r}")
    deltas = torch.stack([updates[i] for i in ids]).to(dtype=x.dtype, device=x.device) if ids else x.new_zeros(0, x.numel())
    finite = torch.isfinite(deltas).all(1)  # (M,) one check for all updates
    if not bool(finite.all()):
        bad = ids[int((~finite).nonzero()[0])]
        raise ValueError(f"updates[{bad}] contains NaN or Inf")
    n = torch.tensor([float(num_samples[i]) for i in ids], dtype=x.dtype, device=x.device)
    return torch.tensor(ids, dtype=torch.long, device=x.device), deltas, n


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
        self.device = torch.device("cpu")
        self.dim: int | None = None
        self.alpha: torch.Tensor | None = None  # (N,) objective weights alpha_i
        self.last_weights: dict[int, float] = {}
        self.local_steps: int | None = None  # K and eta_l of the last local round
        self.local_lr: float | None = None

    # ---- setup ---------------------------------------------------------------------------
    def setup(self, num_clients: int, dim: int, problem: Any = None, *,
              dtype: torch.dtype = torch.float64, device: Any = None) -> "Aggregator":
        """Size the state for ``num_clients`` clients and models of ``dim`` entries, on ``device``
        (default: the problem's device, else the CPU)."""
        self.num_clients = check_int("num_clients", num_clients, minimum=1)
        self.dim = check_int("dim", dim, minimum=1)
        if device is None:
            device = problem.x0.device if problem is not None else "cpu"
        self.device = torch.device(device)
        if problem is not None:
            self.alpha = problem.weights.to(dtype=dtype, device=self.device)
        else:
            self.alpha = torch.full((num_clients,), 1.0 / num_clients, dtype=dtype, device=self.device)
        self._init_state(dtype)
        return self

    def _init_state(self, dtype: torch.dtype) -> None:
        """Allocate server and client state (override)."""

    def _require_setup(self) -> None:
        if self.num_clients is None:
            raise RuntimeError(f"{type(self).__name__}.setup(num_clients, dim) must be called first")

    def _stack(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
               num_samples: Mapping[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`stack_updates` with this algorithm's client range and model size checked."""
        self._require_setup()
        if isinstance(x, torch.Tensor) and x.shape != (self.dim,):
            raise ValueError(f"x must have shape ({self.dim},) (set up with dim={self.dim}), got {tuple(x.shape)}")
        return stack_updates(x, updates, num_samples, self.num_clients)

    def _client_ids(self, client_ids: Any, data: Any = None) -> torch.Tensor:
        """Checked ``client_ids`` of a local round (ints in [0, N), distinct, one per client of ``data``)."""
        self._require_setup()
        ids = check_client_ids("client_ids", client_ids, self.num_clients)
        if data is not None and len(data) != ids.numel():
            raise ValueError(f"client_ids has {ids.numel()} ids but data holds {len(data)} clients")
        return ids

    # ---- client side ---------------------------------------------------------------------
    def local_updates(self, x: torch.Tensor, client_ids: torch.Tensor, data: Any, *, steps: int,
                      lr: float, generator: torch.Generator) -> torch.Tensor:
        """Updates ``Delta_i`` (M, d) of clients ``client_ids`` whose data is ``data``."""
        self._client_ids(client_ids, data)
        self.local_steps, self.local_lr = steps, lr
        return local_sgd(data, x, steps=steps, lr=lr, generator=generator,
                         batch_size=self.batch_size).delta

    def local_update(self, x: torch.Tensor, client_id: int, data: Any, *, steps: int, lr: float,
                     generator: torch.Generator) -> torch.Tensor:
        """One client's update ``Delta = x_after - x_before`` (d,)."""
        ids = torch.tensor([int(client_id)], device="cpu")
        return self.local_updates(x, ids, data, steps=steps, lr=lr, generator=generator)[0]

    # ---- the wire: what crosses between a server and separate clients --------------------
    # In a deployment the server's object and each client's object are different objects. These
    # hooks name everything the client side needs from the server each round, what a client
    # keeps between rounds, and what it sends besides its update (lab.federated.wire uses them).
    def downlink_state(self) -> dict[str, torch.Tensor]:
        """Server state every participating client needs for its local steps (sent with x)."""
        return {}

    def load_downlink_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Client side: install the server state received in this round's message."""

    def client_state(self, client_id: int) -> dict[str, torch.Tensor]:
        """What client ``client_id`` keeps between rounds (its own memory, never the server's)."""
        return {}

    def load_client_state(self, client_id: int, state: Mapping[str, torch.Tensor]) -> None:
        """Client side: restore client ``client_id``'s memory before its local steps."""

    def client_upload(self, client_id: int) -> dict[str, torch.Tensor]:
        """Client side, after :meth:`local_updates`: vectors sent besides the update (commits the
        client's own new state, as a real client does when it sends)."""
        return {}

    def server_receive(self, client_id: int, extras: Mapping[str, torch.Tensor]) -> None:
        """Server side: take in the extra vectors of client ``client_id`` before :meth:`aggregate`."""

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
