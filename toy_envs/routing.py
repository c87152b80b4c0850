"""Token streams for MoE load balancing: skewed, drifting expert affinities.

Three generators, all driven by an explicit ``torch.Generator``:

- :class:`RoutingStream`: token embeddings ``x_t = c_{z_t} + sigma * noise`` around E expert
  centroids ``c_i`` (unit vectors in R^d). The cluster z_t of a token is drawn from a popularity
  distribution that is *skewed* (a few experts get most tokens) and *drifts* (the popular experts
  change over time)::

      pi_i(n) = softmax_i( skew * cos(2 pi i / E - drift * n) )

  ``skew = 0`` is uniform; ``drift`` is the angular speed (radians per step) at which the bump of
  popular experts travels around the ring of experts. ``affinity(x) = x C^T`` is each expert's true
  affinity for each token (the ideal router's logits).
- :func:`gumbel_affinities` / :func:`gumbel_expected_dual`: affinities ``gamma_{t,i} = mu_i +
  Gumbel`` whose top-1 choice is ``softmax(mu + p)`` distributed (the Gumbel-max trick), so the
  expected LP dual of the balanced assignment is known in closed form (k = 1) and its minimizer is
  ``p* = -mu`` (up to a common shift): the toy for online-regret curves.
- :class:`TopicMarkovCorpus`: a toy language - each sequence follows the bigram chain of one of
  several topics, topics drawn with skewed (Zipf) and optionally drifting frequencies - for the tiny
  MoE transformer.
"""
from __future__ import annotations

import math

import torch

from lab.checks import check_int, check_nonneg, check_positive, check_tensor

EULER_GAMMA = 0.5772156649015329


class RoutingStream:
    """Token embeddings with skewed, drifting expert affinities.

    Args:
        n_experts: E, number of expert centroids.
        d_model: d, embedding width.
        skew: strength of the popularity bump (0 = uniform clusters).
        drift: speed of the bump around the experts, in radians per step (0 = static).
        noise: sigma, spread of tokens around their centroid.
        seed: seed of the centroids (token draws take their own generator).
    """

    def __init__(self, n_experts: int = 8, d_model: int = 16, *, skew: float = 2.0, drift: float = 0.0,
                 noise: float = 0.5, seed: int = 0):
        self.n_experts = check_int("n_experts", n_experts, minimum=1)
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.skew = check_nonneg("skew", skew)
        self.drift = check_nonneg("drift", drift)
        self.noise = check_nonneg("noise", noise)
        g = torch.Generator().manual_seed(seed)
        c = torch.randn(n_experts, d_model, generator=g)
        self.centroids = c / c.norm(dim=-1, keepdim=True)  # (E, d)

    def popularity(self, step: int = 0) -> torch.Tensor:
        """``pi(n)``: probability of each expert's cluster at step n, shape (E,)."""
        angles = 2 * math.pi * torch.arange(self.n_experts) / self.n_experts - self.drift * step
        return torch.softmax(self.skew * torch.cos(angles), dim=0)

    def sample(self, n_tokens: int, step: int = 0, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (T, d), z (T,))``: T token embeddings at step n and their clusters."""
        check_int("n_tokens", n_tokens, minimum=1)
        z = torch.multinomial(self.popularity(step), n_tokens, replacement=True, generator=generator)  # (T,)
        x = self.centroids[z] + self.noise * torch.randn(n_tokens, self.d_model, generator=generator)  # (T, d)
        return x, z

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """``gamma = x C^T``: each expert's affinity for each token, shape (T, E)."""
        check_tensor("x", x, ndim=2, shape=(None, self.d_model), finite=True)
        return x @ self.centroids.T


def gumbel_affinities(mu: torch.Tensor, n_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``gamma_{t,i} = mu_i + G_{t,i}``, G standard Gumbel; shape (T, E), float64."""
    check_tensor("mu", mu, ndim=1, finite=True)
    check_int("n_tokens", n_tokens, minimum=1)
    u = torch.rand(n_tokens, mu.numel(), generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return mu.to(torch.float64) - torch.log(-torch.log(u))


def gumbel_expected_dual(bias: torch.Tensor, mu: torch.Tensor, n_tokens: int) -> float:
    """``E[Lagr] = T (logsumexp(mu + p) + gamma_Euler) - (T/E) sum_i p_i`` for k = 1.

    The expected LP dual function of a batch of T Gumbel-affinity tokens at biases p; it is
    minimized at ``p = -mu`` (plus any common shift), where every expert gets T/E tokens.
    """
    check_tensor("bias", bias, shape=(mu.numel(),), finite=True)
    p, m = bias.to(torch.float64), mu.to(torch.float64)
    return float(n_tokens * (torch.logsumexp(m + p, 0) + EULER_GAMMA) - n_tokens / m.numel() * p.sum())


class TopicMarkovCorpus:
    """A toy language: each sequence is a bigram chain of one topic; topic frequencies are skewed.

    Args:
        vocab: V, vocabulary size.
        n_topics: M, number of topics (each with its own V x V transition matrix).
        skew: Zipf exponent of the topic frequencies, ``pi_m ~ (rank_m + 1)^(-skew)``.
        drift: speed (ranks per step) at which the topic ranking rotates (0 = static).
        sharpness: how peaked each row of a transition matrix is (logit scale).
        seed: seed of the transition matrices.
    """

    def __init__(self, vocab: int = 32, n_topics: int = 8, *, skew: float = 1.0, drift: float = 0.0,
                 sharpness: float = 3.0, seed: int = 0):
        self.vocab = check_int("vocab", vocab, minimum=2)
        self.n_topics = check_int("n_topics", n_topics, minimum=1)
        self.skew = check_nonneg("skew", skew)
        self.drift = check_nonneg("drift", drift)
        check_positive("sharpness", sharpness)
        g = torch.Generator().manual_seed(seed)
        logits = sharpness * torch.randn(n_topics, vocab, vocab, generator=g)
        self.transitions = torch.softmax(logits, dim=-1)  # (M, V, V)

    def topic_probs(self, step: int = 0) -> torch.Tensor:
        """Topic frequencies at step n, shape (M,)."""
        rank = (torch.arange(self.n_topics, dtype=torch.float64) + self.drift * step) % self.n_topics
        w = (rank + 1.0) ** (-self.skew)
        return (w / w.sum()).to(torch.get_default_dtype())

    def sample(self, batch: int, seq_len: int, step: int = 0, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, S) int64, topics (B,))``."""
        check_int("batch", batch, minimum=1)
        check_int("seq_len", seq_len, minimum=1)
        topics = torch.multinomial(self.topic_probs(step), batch, replacement=True, generator=generator)  # (B,)
        tokens = torch.empty(batch, seq_len, dtype=torch.int64)
        tokens[:, 0] = torch.randint(self.vocab, (batch,), generator=generator)
        for s in range(1, seq_len):  # a Markov chain: sequential in time, vectorized over the batch
            rows = self.transitions[topics, tokens[:, s - 1]]  # (B, V)
            tokens[:, s] = torch.multinomial(rows, 1, generator=generator).squeeze(-1)
        return tokens, topics

    def entropy_rate(self, step: int = 0) -> float:
        """Reference LM loss (nats/token): the entropy of the next token given the current one *and
        the topic*, averaged over topics and (uniformly) over current tokens - roughly the floor a
        model reaches once it has inferred the topic from the context."""
        t = self.transitions.to(torch.float64)
        h_rows = -(t * torch.log(t.clamp_min(1e-300))).sum(-1)  # (M, V)
        return float((self.topic_probs(step).to(torch.float64) @ h_rows.mean(-1)))


__all__ = ["EULER_GAMMA", "RoutingStream", "TopicMarkovCorpus", "gumbel_affinities", "gumbel_expected_dual"]
