"""toy_envs.routing: skewed, drifting streams, the Gumbel toy, the topic language."""
import pytest
import torch

from toy_envs.routing import RoutingStream, TopicMarkovCorpus, gumbel_affinities, gumbel_expected_dual


def test_stream_skew_and_drift():
    flat = RoutingStream(8, skew=0.0)
    assert torch.allclose(flat.popularity(), torch.full((8,), 1 / 8))
    skewed = RoutingStream(8, skew=2.0)
    pi = skewed.popularity()
    assert pi.max() > 3 * (1 / 8) and pi.sum().item() == pytest.approx(1.0)
    moving = RoutingStream(8, skew=2.0, drift=0.1)
    assert moving.popularity(0).argmax() != moving.popularity(20).argmax()
    assert torch.equal(skewed.popularity(0), skewed.popularity(50))  # no drift, no change


def test_stream_samples_follow_popularity_and_affinity_prefers_own_expert():
    s = RoutingStream(4, 8, skew=1.5, noise=0.1)
    x, z = s.sample(4000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(z, minlength=4).double() / 4000
    assert torch.allclose(freq, s.popularity().double(), atol=0.03)
    assert (s.affinity(x).argmax(-1) == z).double().mean() > 0.9
    with pytest.raises(ValueError, match="x"):
        s.affinity(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="skew"):
        RoutingStream(4, skew=-1.0)


def test_gumbel_expected_dual_matches_monte_carlo():
    mu = torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64)
    p = torch.tensor([0.2, 0.1, -0.3], dtype=torch.float64)
    gamma = gumbel_affinities(mu, 200_000, torch.Generator().manual_seed(0))
    t = 10
    mc = t * ((gamma + p).max(-1).values.mean().item() - p.sum().item() / 3)
    assert gumbel_expected_dual(p, mu, t) == pytest.approx(mc, rel=2e-3)
    # minimized at p = -mu: the top-1 choice is uniform there
    assert gumbel_expected_dual(-mu, mu, t) < gumbel_expected_dual(-mu + torch.tensor([0.1, 0, 0]), mu, t)


def test_topic_corpus():
    c = TopicMarkovCorpus(16, 4, skew=1.0)
    tokens, topics = c.sample(8, 12, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (8, 12) and tokens.dtype == torch.int64 and tokens.max() < 16
    probs = c.topic_probs()
    assert probs[0] > probs[-1] and probs.sum().item() == pytest.approx(1.0)
    assert 0 < c.entropy_rate() < torch.log(torch.tensor(16.0)).item()


def test_sample_steps_follows_each_steps_topic_frequencies():
    g = torch.Generator().manual_seed(0)
    c = TopicMarkovCorpus(16, 4, skew=2.0, drift=1.0)  # the ranking rotates by one topic per step
    tokens, topics = c.sample_steps(4, 4000, 3, generator=g)
    assert tokens.shape == (4, 4000, 3) and topics.shape == (4, 4000)
    for n in range(4):
        freq = torch.bincount(topics[n], minlength=4).double() / 4000
        assert torch.allclose(freq, c.topic_probs(n).double(), atol=0.03)
    assert topics[0].bincount(minlength=4).argmax() != topics[1].bincount(minlength=4).argmax()
    static = TopicMarkovCorpus(16, 4, skew=2.0)
    _, t0 = static.sample_steps(2, 4000, 2, generator=g)
    assert t0[0].bincount(minlength=4).argmax() == t0[1].bincount(minlength=4).argmax() == 0


def test_token_skew_makes_a_few_tokens_frequent():
    g = torch.Generator().manual_seed(1)
    flat, _ = TopicMarkovCorpus(32, 4).sample_steps(1, 500, 16, generator=g)
    skewed, _ = TopicMarkovCorpus(32, 4, token_skew=1.5).sample_steps(1, 500, 16, generator=g)
    share = lambda t: (t.reshape(-1).bincount(minlength=32).sort(descending=True).values[:3].sum() / t.numel()).item()  # noqa: E731
    assert share(skewed) > 0.25 > 0.2 > share(flat)  # the 3 most frequent tokens: 0.31 vs 0.15
    with pytest.raises(ValueError, match="token_skew"):
        TopicMarkovCorpus(8, 2, token_skew=-1.0)
