"""The federated simulator: rounds of sample -> train locally -> transmit -> check -> aggregate.

    history = simulate(problem, "fedau", Bernoulli(p), rounds=200, local_steps=5, lr=0.05, seed=0)
    history["loss"], history["distance"], history["weights"], history["participation"]
    history.artifacts["dropped"]     # [{"round", "client", "reason"}, ...]

One round r:

1. the participation model picks the active clients (busy stragglers are skipped);
2. the server sends x (plus ``downlink_noise`` * N(0, I) per client on a noisy link);
3. all active clients train at once (``algorithm.local_updates``, vectorized with ``torch.func``);
4. faults strike (:class:`Faults`): a client drops mid-round (no upload), an upload turns NaN/Inf,
   ``uplink_noise`` is added, a straggler's upload comes ``delay`` rounds late;
5. the server *checks* every upload before use: dropped, non-finite, above ``max_update_norm``,
   or later than ``deadline`` -> it is set aside and logged with its reason; an upload within the
   deadline waits and is aggregated (stale) in the round it arrives; none is lost;
6. ``algorithm.aggregate`` builds the next model from the accepted uploads; a non-finite result
   is refused (the model stays, the run stops and says so).

Recorded per round: ``loss`` (global objective F), ``distance`` (to x* when known), ``accuracy``
(classification), ``participants``, ``accepted``, ``dropped``, ``bytes`` (cumulative, up + down),
``drift`` (mean distance of the accepted updates from their mean: how far clients pull apart),
``staleness``; with ``record_clients``: ``participation`` (N,) and ``weights`` (N,) (the weight
each client's update received). Artifacts: ``dropped`` (every refused upload with its reason),
``probabilities`` (the true rates, unknown to the algorithm), ``effective_weight`` (mean weight
per client over the run, participation included) and, where the algorithm estimates them,
``inverse_p_estimate``.

Where the clients train is pluggable (``local_training``): by default all active clients train at
once in this process (:class:`Vectorized`); :class:`PerClientLoop` trains them one at a time
through :func:`lab.federated.wire.client_round`, the function a Flower ``ClientApp`` runs; and
``lab.federated.flower`` plugs in real Flower clients that receive the model and the algorithm's
server state in messages. The rest of the round (participation, faults, deadlines, aggregation,
records) is this one loop for all three, so their Histories are comparable number for number.

Reproducibility: ``seed`` spawns four independent generators (participation, local minibatches,
faults, link noise), so switching faults on does not change who participates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lab import progress
from lab.checks import check_int, check_nonneg, check_positive, check_range
from lab.federated.base import Aggregator
from lab.federated.participation import Participation
from lab.history import History


@dataclass(frozen=True)
class Faults:
    """What can go wrong in a round (all off by default)."""

    drop_prob: float = 0.0  # a participant drops mid-round: its upload never comes
    corrupt_prob: float = 0.0  # an upload arrives as NaN (even draws) or Inf (odd draws)
    deadline: int = 0  # rounds an upload may be late; later ones are dropped
    uplink_noise: float = 0.0  # std of additive Gaussian noise on every uploaded vector
    downlink_noise: float = 0.0  # std of additive Gaussian noise on the model each client receives
    max_update_norm: float | None = None  # refuse uploads with a larger norm (None = no bound)

    def __post_init__(self):
        check_range("drop_prob", self.drop_prob, 0.0, 1.0)
        check_range("corrupt_prob", self.corrupt_prob, 0.0, 1.0)
        check_int("deadline", self.deadline, minimum=0)
        check_nonneg("uplink_noise", self.uplink_noise)
        check_nonneg("downlink_noise", self.downlink_noise)
        if self.max_update_norm is not None:
            check_positive("max_update_norm", self.max_update_norm)


class Vectorized:
    """Local training of all active clients at once, in this process (the simulator's default)."""

    def __init__(self, problem: Any):
        self.problem = problem

    def train(self, algorithm: Aggregator, x: torch.Tensor, ids: torch.Tensor, round: int, *, steps: int,
              lr: float, generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        """``(deltas (M, d), base rounds (M,))``: each client's update and the round of the model it used."""
        deltas = algorithm.local_updates(x, ids, self.problem.clients(ids), steps=steps, lr=lr, generator=generator)
        return deltas, [round] * len(ids)

    def idle(self, algorithm: Aggregator, ids: torch.Tensor, round: int, *, steps: int, lr: float,
             generator: torch.Generator) -> None:
        """Let the unselected clients ``ids`` update locally (algorithms with ``idle_updates``)."""
        hook = getattr(algorithm, "idle_updates", None)
        if hook is not None:
            hook(ids, self.problem.clients(ids), steps=steps, lr=lr, generator=generator)


def _generators(seed: int, device: Any = "cpu") -> list[torch.Generator]:
    """Participation and faults draw on the CPU (small, the same on every device); local minibatches
    and link noise on the problem's device."""
    seeds = np.random.SeedSequence(seed).generate_state(4)
    places = ("cpu", device, "cpu", device)
    return [torch.Generator(device=place).manual_seed(int(s)) for s, place in zip(seeds, places)]


def simulate(problem: Any, algorithm: Aggregator | str, participation: Participation, rounds: int,
             local_steps: int, lr: float, seed: int = 0, *, faults: Faults | None = None,
             record_clients: bool = True, eval_every: int = 1, local_training: Any = None) -> History:
    """Run ``rounds`` rounds of federated training; see the module docstring.

    Args:
        problem: a :class:`toy_envs.federated.FederatedProblem`.
        algorithm: an aggregator object, or a registry spec such as ``"fedstale(beta=0.3)"``.
        participation: a participation model over the problem's clients.
        rounds, local_steps: R >= 1 rounds of K >= 1 local steps. lr: local learning rate eta_l.
        seed: seeds every random draw of the run.
        faults: :class:`Faults` (None = none).
        record_clients: store the (N,) participation and weight vectors of every round.
        eval_every: evaluate loss/distance/accuracy every this many rounds (and the last).
        local_training: where clients train: ``None`` = :class:`Vectorized` (all at once, here),
            :class:`PerClientLoop`, or Flower clients (``lab.federated.flower``); any object with
            ``train(algorithm, x, ids, round, *, steps, lr, generator) -> (deltas, base_rounds)``
            and ``idle(algorithm, ids, round, *, steps, lr, generator)``.
    """
    from lab.registry import make

    check_int("rounds", rounds, minimum=1)
    check_int("local_steps", local_steps, minimum=1)
    check_positive("lr", lr)
    check_int("eval_every", eval_every, minimum=1)
    faults = faults or Faults()
    name = algorithm if isinstance(algorithm, str) else type(algorithm).__name__
    if isinstance(algorithm, str):
        algorithm = make("aggregator", algorithm)
    if not isinstance(participation, Participation):
        raise TypeError(f"participation must be a Participation model, got {type(participation).__name__}")
    N, d = problem.num_clients, problem.dim
    if participation.num_clients != N:
        raise ValueError(f"participation covers {participation.num_clients} clients, the problem has {N}")
    x = problem.x0.clone()
    g_part, g_local, g_fault, g_noise = _generators(seed, x.device)
    algorithm.setup(N, d, problem, dtype=x.dtype)
    trainer = Vectorized(problem) if local_training is None else local_training
    wants_idle = bool(getattr(algorithm, "wants_idle_updates", False))
    elem = x.element_size()
    n_all = problem.num_samples.tolist()
    pending: list[tuple[int, int, torch.Tensor, int]] = []  # (arrival round, client, delta, base round)
    busy = torch.zeros(N, dtype=torch.bool, device="cpu")
    dropped: list[dict[str, Any]] = []
    weight_sum = torch.zeros(N, dtype=torch.float64, device="cpu")
    total_bytes = 0
    history = History(meta={"algorithm": name, "participation": type(participation).__name__,
                             "problem": problem.name, "seed": seed, "rounds": rounds,
                             "local_steps": local_steps, "lr": lr, "faults": asdict(faults)})
    history.append(0, **_evaluate(problem, x), bytes=0.0)

    for r in progress.steps(rounds, desc=name, history=history):
        active, delay = participation.sample(r, g_part)
        active = active & ~busy
        ids = active.nonzero().squeeze(1)
        M = int(ids.numel())
        total_bytes += M * d * elem * algorithm.downlink_vectors
        fresh: dict[int, torch.Tensor] = {}
        dropped_now = 0
        if M:
            x_recv = x
            if faults.downlink_noise:
                x_recv = x + faults.downlink_noise * torch.randn(M, d, generator=g_noise, dtype=x.dtype, device=x.device)
            deltas, bases = trainer.train(algorithm, x_recv, ids, r, steps=local_steps, lr=lr, generator=g_local)
            deltas = deltas.clone()  # (M, d)
            quit_mid = torch.rand(M, generator=g_fault, device="cpu") < faults.drop_prob
            corrupt = (torch.rand(M, generator=g_fault, device="cpu") < faults.corrupt_prob) & ~quit_mid
            for k in corrupt.nonzero().squeeze(1).tolist():
                deltas[k] = float("nan") if k % 2 == 0 else float("inf")
            total_bytes += int((~quit_mid).sum()) * d * elem * algorithm.uplink_vectors
            if faults.uplink_noise:
                deltas = deltas + faults.uplink_noise * torch.randn(M, d, generator=g_noise, dtype=x.dtype, device=x.device)
            finite = torch.isfinite(deltas).all(1)
            norms = torch.where(finite, deltas.norm(dim=1), torch.zeros(M, dtype=deltas.dtype, device=deltas.device)).tolist()
            bound = faults.max_update_norm
            rows = deltas.unbind(0)
            for k, (cid, quit, ok, lag, base) in enumerate(zip(ids.tolist(), quit_mid.tolist(), finite.tolist(),
                                                               delay[ids].tolist(), bases)):
                reason = None
                if quit:
                    reason = "dropped mid-round"
                elif not ok:
                    reason = "non-finite update (NaN/Inf)"
                elif bound is not None and norms[k] > bound:
                    reason = f"update norm {norms[k]:.3g} above bound {bound}"
                elif lag > faults.deadline:
                    reason = f"straggler past deadline (delay {lag} > {faults.deadline})"
                if reason is not None:
                    dropped.append({"round": r, "client": cid, "reason": reason})
                    dropped_now += 1
                elif lag > 0:
                    pending.append((r + lag, cid, rows[k], base))
                    busy[cid] = True
                elif base != r:
                    pending.append((r, cid, rows[k], base))  # trained on an older model: stale now
                else:
                    fresh[cid] = rows[k]
        arrived = [p for p in pending if p[0] == r]
        pending = [p for p in pending if p[0] != r]
        updates = dict(fresh)
        staleness = {cid: 0 for cid in fresh}
        for _, cid, delta, base in arrived:
            updates[cid], staleness[cid] = delta, r - base
            busy[cid] = False
        x_new = algorithm.aggregate(x, updates, {i: n_all[i] for i in updates}, r, staleness=staleness)
        if not torch.isfinite(x_new).all():
            dropped.extend({"round": r, "client": cid, "reason": "aggregate diverged (non-finite model refused)"}
                           for cid in updates)
            history.meta["diverged"] = r
            break
        if wants_idle:
            idle = (~active & ~busy).nonzero().squeeze(1)
            if idle.numel():
                trainer.idle(algorithm, idle, r, steps=local_steps, lr=lr, generator=g_local)
        x = x_new
        row: dict[str, Any] = {"participants": M, "accepted": len(updates), "dropped": dropped_now,
                               "bytes": float(total_bytes)}
        if updates:
            stacked = torch.stack([updates[i] for i in sorted(updates)])
            row["drift"] = float((stacked - stacked.mean(0)).norm(dim=1).mean())
            row["staleness"] = float(np.mean(list(staleness.values())))
        weights = torch.zeros(N, dtype=torch.float64, device="cpu")
        if algorithm.last_weights:
            weights[list(algorithm.last_weights)] = torch.tensor(list(algorithm.last_weights.values()),
                                                                 dtype=torch.float64, device="cpu")
        weight_sum += weights
        if record_clients:
            row["participation"] = active.to(torch.float64)
            row["weights"] = weights
        if (r + 1) % eval_every == 0 or r == rounds - 1:
            row.update(_evaluate(problem, x))
        history.append(r + 1, **row)

    done = len(history) - 1
    history.artifacts["dropped"] = dropped
    history.artifacts["pending_at_end"] = [{"client": cid, "arrival": a, "base_round": b} for a, cid, _, b in pending]
    history.artifacts["probabilities"] = participation.probabilities.tolist()
    history.artifacts["effective_weight"] = (weight_sum / max(done, 1)).tolist()
    estimator = getattr(algorithm, "estimator", None)
    if estimator is not None:
        history.artifacts["inverse_p_estimate"] = estimator.weights(torch.arange(N, device=estimator.omega.device)).cpu().tolist()
    history.artifacts["x_final"] = x.cpu().tolist()
    return history


def _evaluate(problem: Any, x: torch.Tensor) -> dict[str, float]:
    out = {"loss": problem.global_loss(x)}
    if problem.x_star is not None:
        out["distance"] = problem.distance(x)
    if problem.kind != "least_squares":
        out["accuracy"] = problem.accuracy(x)
    return out
