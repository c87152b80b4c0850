"""The simulator: reproducible, survives every fault, lets no bad update in, loses no accepted one."""
import pytest
import torch

from lab.federated import Bernoulli, Faults, Stragglers, simulate
from lab.federated.fedavg import FedAvg

ALL = torch.ones(8, dtype=torch.float64)


def test_reproducible_from_seed(ls_small):
    p = torch.full((8,), 0.5, dtype=torch.float64)
    run = lambda seed: simulate(ls_small, "fedavg(batch_size=4)", Bernoulli(p), 5, 2, 0.1, seed)  # noqa: E731
    assert run(0) == run(0)
    assert run(0).artifacts["x_final"] != run(1).artifacts["x_final"]


def test_history_contents(ls_small):
    h = simulate(ls_small, "fedau", Bernoulli(torch.full((8,), 0.5)), rounds=4, local_steps=2, lr=0.1, seed=0)
    assert len(h) == 5 and h["loss"].shape == (5,) and h["distance"].shape == (5,)
    assert h["participation"].shape == (4, 8) and h["weights"].shape == (4, 8)
    # weights are non-zero exactly where a client's update was aggregated
    assert ((h["weights"] > 0) <= (h["participation"] > 0)).all()
    # bytes: every participant downloads and uploads one float64 vector of d = 4
    assert h["bytes"][-1] == h["participants"].sum() * 2 * 4 * 8
    assert len(h.artifacts["inverse_p_estimate"]) == 8


class Recorder(FedAvg):
    """FedAvg that remembers what reached ``aggregate``."""

    def __init__(self):
        super().__init__(weighting="participating")
        self.seen = []

    def aggregate(self, x, updates, num_samples, round, *, staleness=None):
        self.seen.append({i: d.clone() for i, d in updates.items()})
        return super().aggregate(x, updates, num_samples, round, staleness=staleness)


def test_faults_are_survived_reported_and_never_aggregated(ls_small):
    # Prepare: drops, NaN/Inf uploads, stragglers with a deadline of 1 round
    alg = Recorder()
    faults = Faults(drop_prob=0.2, corrupt_prob=0.2, deadline=1)
    # Execute
    h = simulate(ls_small, alg, Stragglers(ALL, slowness=0.7), rounds=12, local_steps=2, lr=0.1, seed=0,
                 faults=faults)
    # Assert: it survived, every aggregated update was finite, and each kind of fault was reported
    assert len(h) == 13 and all(torch.isfinite(torch.tensor(h["loss"])))
    assert all(torch.isfinite(d).all() for seen in alg.seen for d in seen.values())
    reasons = {d["reason"].split(" (")[0] for d in h.artifacts["dropped"]}
    assert {"dropped mid-round", "non-finite update", "straggler past deadline"} <= reasons
    # no accepted update lost: participants = aggregated + dropped + still in flight (+ late arrivals)
    aggregated = sum(len(s) for s in alg.seen)
    assert h["participants"].sum() == aggregated + len(h.artifacts["dropped"]) + len(h.artifacts["pending_at_end"])
    assert h["staleness"].max() >= 1  # some late uploads within the deadline were aggregated


def test_noisy_link_and_norm_bound(ls_small):
    clean = simulate(ls_small, "fedavg", Bernoulli(ALL), 30, 2, 0.1, 0, record_clients=False)
    noisy = simulate(ls_small, "fedavg", Bernoulli(ALL), 30, 2, 0.1, 0, record_clients=False,
                     faults=Faults(uplink_noise=0.05, downlink_noise=0.05))
    assert noisy["distance"][-1] > clean["distance"][-1]
    bounded = simulate(ls_small, "fedavg", Bernoulli(ALL), 3, 2, 0.1, 0, faults=Faults(max_update_norm=1e-9))
    assert all("above bound" in d["reason"] for d in bounded.artifacts["dropped"])
    assert len(bounded.artifacts["dropped"]) == 24 and bounded["distance"][-1] == bounded["distance"][0]


def test_bad_arguments(ls_small):
    with pytest.raises(ValueError, match="rounds"):
        simulate(ls_small, "fedavg", Bernoulli(ALL), 0, 1, 0.1)
    with pytest.raises(ValueError, match="lr"):
        simulate(ls_small, "fedavg", Bernoulli(ALL), 1, 1, -0.1)
    with pytest.raises(ValueError, match="8"):
        simulate(ls_small, "fedavg", Bernoulli(torch.ones(3)), 1, 1, 0.1)
    with pytest.raises(TypeError, match="participation"):
        simulate(ls_small, "fedavg", "bernoulli", 1, 1, 0.1)
    with pytest.raises(ValueError, match="drop_prob"):
        Faults(drop_prob=1.5)
