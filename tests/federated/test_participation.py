"""Participation models: long-run frequency p_i, mean interval 1/p_i, exact M-of-N, delays."""
import pytest
import torch

from lab.federated import Bernoulli, Cyclic, Markov, Stragglers, Uniform, heterogeneous_rates
from lab.federated.fedau import IntervalEstimator

P = torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)
P_MANY = P.repeat(40)  # 40 clients per rate: averages over clients instead of very long runs


@pytest.mark.parametrize("make", [lambda: Bernoulli(P_MANY), lambda: Markov(P_MANY, q=0.2),
                                  lambda: Cyclic(P_MANY, period=20)])
def test_frequency_and_mean_interval_match_p(make):
    # Prepare
    model, g = make(), torch.Generator().manual_seed(0)
    est = IntervalEstimator(len(P_MANY))
    # Execute
    masks = []
    for r in range(600):
        active, delay = model.sample(r, g)
        est.update(active)
        masks.append(active)
    freq = torch.stack(masks).double().mean(0).reshape(40, 3).mean(0)
    omega = est.omega.reshape(40, 3).mean(0)
    # Assert: frequency -> p_i and mean recorded interval -> 1/p_i
    torch.testing.assert_close(freq, P, atol=0.02, rtol=0.0)
    torch.testing.assert_close(omega, 1 / P, rtol=0.12, atol=0.0)
    assert int(delay.sum()) == 0


def test_cutoff_caps_the_interval_estimate():
    # Bernoulli(p), intervals min(G, K): omega -> (1 - (1 - p)^K) / p
    g = torch.Generator().manual_seed(1)
    p, K = torch.full((200,), 0.1, dtype=torch.float64), 5
    est, model = IntervalEstimator(200, cutoff=K), Bernoulli(p)
    for r in range(400):
        est.update(model.sample(r, g)[0])
    expected = (1 - 0.9**K) / 0.1
    assert abs(float(est.omega.mean()) - expected) < 0.05 * expected


def test_interval_estimator_hand_checked():
    # client 0 joins every round; client 1 joins at rounds 0 and 3 -> intervals 1 then 3
    est = IntervalEstimator(2)
    for mask in ([1, 1], [1, 0], [1, 0], [1, 1]):
        est.update(torch.tensor(mask, dtype=torch.bool))
    assert est.omega.tolist() == [1.0, 2.0]
    assert est.count.tolist() == [4, 2]


def test_uniform_samples_exactly_m_and_markov_is_bursty():
    g = torch.Generator().manual_seed(0)
    u = Uniform(10, 3)
    assert all(int(u.sample(r, g)[0].sum()) == 3 for r in range(20))
    # Markov with small q changes state far less often than Bernoulli with the same p
    p = torch.full((50,), 0.5, dtype=torch.float64)
    def switches(model):
        states = torch.stack([model.sample(r, g)[0] for r in range(200)])
        return int((states[1:] != states[:-1]).sum())
    assert switches(Markov(p, q=0.05)) < 0.3 * switches(Bernoulli(p))


def test_stragglers_delay_only_participants():
    g = torch.Generator().manual_seed(0)
    model = Stragglers(torch.full((100,), 0.5, dtype=torch.float64), slowness=2.0)
    active, delay = model.sample(0, g)
    assert (delay[~active] == 0).all() and delay[active].float().mean() > 1.0


def test_heterogeneous_rates_spread():
    g = torch.Generator().manual_seed(0)
    dist = torch.eye(4).repeat(5, 1).double()
    flat = heterogeneous_rates(dist, 0.3, 0.0, generator=g)
    wide = heterogeneous_rates(dist, 0.3, 1.5, generator=g)
    assert torch.allclose(flat, torch.full_like(flat, 0.3))
    assert wide.max() / wide.min() > 5


def test_bad_inputs():
    with pytest.raises(ValueError, match="probabilities"):
        Bernoulli(torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="num_sampled"):
        Uniform(3, 5)
    with pytest.raises(ValueError, match="q"):
        Markov(P, q=0.0)
    with pytest.raises(ValueError, match="slowness"):
        Stragglers(P, slowness=-1.0)


def test_make_participation_picks_m_from_the_mean_rate():
    from lab.federated import make_participation

    # mean rate 0.3 of 10 clients -> M = 3 each round; a spec's num_sampled wins; at least one
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.1, 0.5] * 5, dtype=torch.float64)
    assert int(make_participation("uniform", p).sample(0, g)[0].sum()) == 3
    assert int(make_participation("uniform(num_sampled=7)", p).sample(0, g)[0].sum()) == 7
    assert make_participation("uniform", torch.full((10,), 0.01, dtype=torch.float64)).num_sampled == 1
