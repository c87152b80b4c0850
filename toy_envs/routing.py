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
  MoE transformer and the Hugging Face MoE models.

Devices: every generator takes ``device`` (default CPU). Fixed structure (centroids, transition
matrices) is drawn on the CPU from its seed and then moved, so a seed gives the same stream
structure on every device; per-step draws use the generator you pass, which must live on that
device (``torch.Generator(device=...)``).
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
        device: where the centroids and the samples live.
    """

    def __init__(self, n_experts: int = 8, d_model: int = 16, *, skew: float = 2.0, drift: float = 0.0,
                 noise: float = 0.5, seed: int = 0, device: torch.device | str | None = None):
        self.n_experts = check_int("n_experts", n_experts, minimum=1)
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.skew = check_nonneg("skew", skew)
        self.drift = check_nonneg("drift", drift)
        self.noise = check_nonneg("noise", noise)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        g = torch.Generator(device="cpu").manual_seed(seed)
        c = torch.randn(n_experts, d_model, generator=g, device="cpu")
        self.centroids = (c / c.norm(dim=-1, keepdim=True)).to(self.device)  # (E, d)

    def popularity(self, step: int = 0) -> torch.Tensor:
        """``pi(n)``: probability of each expert's cluster at step n, shape (E,)."""
        angles = 2 * math.pi * torch.arange(self.n_experts, device=self.device) / self.n_experts - self.drift * step
        return torch.softmax(self.skew * torch.cos(angles), dim=0)

    def sample(self, n_tokens: int, step: int = 0, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (T, d), z (T,))``: T token embeddings at step n and their clusters."""
        check_int("n_tokens", n_tokens, minimum=1)
        z = torch.multinomial(self.popularity(step), n_tokens, replacement=True, generator=generator)  # (T,)
        noise = torch.randn(n_tokens, self.d_model, generator=generator, device=self.device)
        x = self.centroids[z] + self.noise * noise  # (T, d)
        return x, z

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """``gamma = x C^T``: each expert's affinity for each token, shape (T, E)."""
        check_tensor("x", x, ndim=2, shape=(None, self.d_model), finite=True)
        return x @ self.centroids.T


def gumbel_affinities(mu: torch.Tensor, n_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``gamma_{t,i} = mu_i + G_{t,i}``, G standard Gumbel; shape (T, E), float64, on ``mu``'s device."""
    check_tensor("mu", mu, ndim=1, finite=True)
    check_int("n_tokens", n_tokens, minimum=1)
    u = torch.rand(n_tokens, mu.numel(), generator=generator, dtype=torch.float64,
                   device=mu.device).clamp(1e-12, 1 - 1e-12)
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
        token_skew: Zipf exponent z of a prior over the *next* token shared by every topic, added to
            the transition logits as ``-z log(rank + 1)`` (0 = none): a few tokens become frequent
            in every topic, so a router that follows token identity overloads their experts.
        seed: seed of the transition matrices.
        device: where the transition matrices and the samples live.
    """

    def __init__(self, vocab: int = 32, n_topics: int = 8, *, skew: float = 1.0, drift: float = 0.0,
                 sharpness: float = 3.0, token_skew: float = 0.0, seed: int = 0,
                 device: torch.device | str | None = None):
        self.vocab = check_int("vocab", vocab, minimum=2)
        self.n_topics = check_int("n_topics", n_topics, minimum=1)
        self.skew = check_nonneg("skew", skew)
        self.drift = check_nonneg("drift", drift)
        check_positive("sharpness", sharpness)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        g = torch.Generator(device="cpu").manual_seed(seed)
        logits = sharpness * torch.randn(n_topics, vocab, vocab, generator=g, device="cpu")
        self.token_skew = check_nonneg("token_skew", token_skew)
        if token_skew > 0:  # shared Zipf prior over the next token, ranks in vocabulary order
            logits = logits - token_skew * torch.log(torch.arange(1, vocab + 1, dtype=logits.dtype, device="cpu"))
        self.transitions = torch.softmax(logits, dim=-1).to(self.device)  # (M, V, V)

    def topic_probs(self, step: int = 0) -> torch.Tensor:
        """Topic frequencies at step n, shape (M,)."""
        rank = (torch.arange(self.n_topics, dtype=torch.float64, device=self.device) + self.drift * step) % self.n_topics
        w = (rank + 1.0) ** (-self.skew)
        return (w / w.sum()).to(torch.get_default_dtype())

    def sample(self, batch: int, seq_len: int, step: int = 0, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, S) int64, topics (B,))``."""
        check_int("batch", batch, minimum=1)
        check_int("seq_len", seq_len, minimum=1)
        topics = torch.multinomial(self.topic_probs(step), batch, replacement=True, generator=generator)  # (B,)
        return self._chains(topics, seq_len, generator), topics

    def sample_steps(self, steps: int, batch: int, seq_len: int, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (N, B, S), topics (N, B))``: the batches of steps ``0..N-1`` drawn at once.

        Each step's topics follow that step's frequencies (drift included); the chains of all
        steps run side by side, so a whole training run costs S sampling calls instead of N * S.
        """
        check_int("steps", steps, minimum=1)
        check_int("batch", batch, minimum=1)
        check_int("seq_len", seq_len, minimum=1)
        if self.drift == 0:
            topics = torch.multinomial(self.topic_probs(0), steps * batch, replacement=True, generator=generator)
        else:
            probs = torch.stack([self.topic_probs(n) for n in range(steps)])  # (N, M)
            topics = torch.multinomial(probs, batch, replacement=True, generator=generator).reshape(-1)
        tokens = self._chains(topics, seq_len, generator)  # (N*B, S)
        return tokens.reshape(steps, batch, seq_len), topics.reshape(steps, batch)

    def _chains(self, topics: torch.Tensor, seq_len: int, generator: torch.Generator | None) -> torch.Tensor:
        """One bigram chain of ``seq_len`` tokens per entry of ``topics`` (B,) -> (B, S) int64."""
        b = topics.shape[0]
        tokens = torch.empty(b, seq_len, dtype=torch.int64, device=self.device)
        tokens[:, 0] = torch.randint(self.vocab, (b,), generator=generator, device=self.device)
        for s in range(1, seq_len):  # a Markov chain: sequential in time, vectorized over the batch
            rows = self.transitions[topics, tokens[:, s - 1]]  # (B, V)
            tokens[:, s] = torch.multinomial(rows, 1, generator=generator).squeeze(-1)
        return tokens

    def entropy_rate(self, step: int = 0) -> float:
        """Reference LM loss (nats/token): the entropy of the next token given the current one *and
        the topic*, averaged over topics and (uniformly) over current tokens - roughly the floor a
        model reaches once it has inferred the topic from the context."""
        t = self.transitions.to(torch.float64)
        h_rows = -(t * torch.log(t.clamp_min(1e-300))).sum(-1)  # (M, V)
        return float((self.topic_probs(step).to(torch.float64) @ h_rows.mean(-1)))


__all__ = ["EULER_GAMMA", "RoutingStream", "TopicMarkovCorpus", "gumbel_affinities", "gumbel_expected_dual"]
