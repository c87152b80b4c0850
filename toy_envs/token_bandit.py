"""A one-token bandit: the prompt is a context token, the response is one arm token.

Vocabulary: ``<pad> <eos>``, ``n_contexts`` context tokens ``s0, s1, ...``, then ``n_arms`` arm tokens
``a0, a1, ...``. Arm ``k`` in context ``c`` pays 1 with probability ``p[c, k]`` (else 0); every
other token pays 0. Everything a softmax policy does here is known in closed form. With logits
``z`` over the vocabulary, ``π = softmax(z)`` and ``r_v`` the expected reward of token ``v``:

    J(z)      = Σ_v π_v r_v                      (expected reward)
    ∂J/∂z_v   = π_v (r_v − J)                    (exact policy gradient)
    optimum   : all mass on argmax_v r_v, J* = max_k p[c, k]

so a learning rule can be checked against the exact gradient, and "reaches the optimal arm" is a
crisp test. The probabilities of each context are a permutation of ``linspace(0.2, 0.8, n_arms)``
(drawn from ``seed``), pulled towards 0.5 by ``difficulty ∈ [0, 1)``:
``p ← 0.5 + (1 − difficulty)(p − 0.5)`` (a smaller gap between arms is harder to resolve).
"""
from __future__ import annotations

import torch

from toy_envs.token_tasks import TokenTask, TokenTaskEnv


class TokenBanditTask(TokenTask):
    """K-armed Bernoulli bandit as a one-token language task (optionally contextual).

    Args:
        n_arms: number of arms K (>= 2).
        n_contexts: number of context tokens (1 = a plain bandit).
        difficulty: in [0, 1); shrinks the arm probabilities towards 0.5.
        probs: explicit arm probabilities (one context); overrides the drawn ones.
        seed: seed of the permutation of arm probabilities per context.
    """

    prompt_len = 1
    max_new_tokens = 1

    def __init__(self, n_arms: int = 8, n_contexts: int = 1, difficulty: float = 0.0,
                 probs: tuple[float, ...] | None = None, seed: int = 0):
        if probs is not None:
            probs_t = torch.as_tensor(probs, dtype=torch.float64, device="cpu").reshape(1, -1)
            if probs_t.shape[1] < 2 or not ((probs_t >= 0) & (probs_t <= 1)).all():
                raise ValueError(f"probs must hold >= 2 probabilities in [0, 1], got {probs!r}")
            n_arms, n_contexts = probs_t.shape[1], 1
        for name, value, low in (("n_arms", n_arms, 2), ("n_contexts", n_contexts, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not 0.0 <= float(difficulty) < 1.0:
            raise ValueError(f"difficulty must lie in [0, 1), got {difficulty!r}")
        if probs is None:
            # the table is a constant of the task: always built on the CPU (moved to the prompts' device
            # where it is used)
            g = torch.Generator(device="cpu").manual_seed(seed)
            base = torch.linspace(0.2, 0.8, n_arms, dtype=torch.float64, device="cpu")
            probs_t = torch.stack([base[torch.randperm(n_arms, generator=g, device="cpu")]
                                   for _ in range(n_contexts)])
        self.n_arms, self.n_contexts, self.difficulty = n_arms, n_contexts, float(difficulty)
        self.arm_probs = 0.5 + (1.0 - self.difficulty) * (probs_t - 0.5)          # (C, K)
        self.first_context, self.first_arm = 2, 2 + n_contexts
        self.vocab = ("<pad>", "<eos>", *(f"s{c}" for c in range(n_contexts)),
                      *(f"a{k}" for k in range(n_arms)))

    # ---- closed form ----------------------------------------------------------------------
    def reward_table(self) -> torch.Tensor:
        """(n_contexts, V) expected reward of every token in every context."""
        table = torch.zeros(self.n_contexts, self.vocab_size, dtype=torch.float64, device=self.arm_probs.device)
        table[:, self.first_arm:] = self.arm_probs
        return table

    @property
    def optimal_arm(self) -> torch.Tensor:
        """(n_contexts,) token id of the best arm of each context."""
        return self.arm_probs.argmax(-1) + self.first_arm

    def expected_reward(self, logits: torch.Tensor) -> torch.Tensor:
        """J = Σ_v softmax(z)_v r_v for logits (n_contexts, V) -> (n_contexts,)."""
        return (torch.softmax(logits.double(), -1) * self.reward_table()).sum(-1)

    def policy_gradient(self, logits: torch.Tensor) -> torch.Tensor:
        """Exact ∂J/∂z = π (r − J), (n_contexts, V)."""
        pi = torch.softmax(logits.double(), -1)
        return pi * (self.reward_table() - self.expected_reward(logits)[:, None])

    # ---- the batched API ------------------------------------------------------------------
    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.n_contexts, (n, 1), generator=generator,
                             device=generator.device) + self.first_context

    def context(self, prompts: torch.Tensor) -> torch.Tensor:
        """(n,) context index of each prompt."""
        return prompts[:, 0] - self.first_context

    def reward(self, prompts: torch.Tensor, responses: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Bernoulli rewards of the first response token (drawn with ``generator``); with no
        generator, the expected reward (deterministic)."""
        prompts, responses = self.check_batch(prompts, responses)
        table = self.reward_table().to(prompts.device)
        mean = table[self.context(prompts), responses[:, 0]].float()                 # (n,)
        if generator is None:
            return mean
        return (torch.rand(mean.shape, generator=generator, device=mean.device) < mean).float()

    def correct(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the chosen token is the best arm of the context."""
        prompts, responses = self.check_batch(prompts, responses)
        return responses[:, 0] == self.optimal_arm.to(prompts.device)[self.context(prompts)]


class TokenBanditEnv(TokenTaskEnv):
    """A K-armed Bernoulli bandit in which the single action is a token.

    ## Description
    Observe a context token, emit one token; arm tokens pay 1 with a context-dependent probability.

    ## Action Space
    ``Discrete(2 + n_contexts + n_arms)``: ``<pad> <eos>``, context tokens, arm tokens.

    ## Observation Space
    ``MultiDiscrete([V, V])``: the context token and the chosen token (``<pad>`` before acting).

    ## Rewards
    Bernoulli(``p[c, k]``) for arm ``k`` in context ``c``, drawn from ``self.np_random``; 0 for any
    other token.

    ## Starting State
    A context drawn uniformly with ``self.np_random``.

    ## Episode End
    After one step.

    ## Arguments
    ``n_arms`` (8), ``n_contexts`` (1), ``difficulty`` (0.0), ``seed`` (0, the arm permutation).
    """

    def __init__(self, n_arms: int = 8, n_contexts: int = 1, difficulty: float = 0.0, seed: int = 0,
                 render_mode: str | None = None):
        super().__init__(TokenBanditTask(n_arms, n_contexts, difficulty, seed=seed), render_mode)

    def step(self, action):
        obs, mean_reward, done, truncated, info = super().step(action)
        reward = float(self.np_random.random() < mean_reward)
        return obs, reward, done, truncated, {**info, "expected_reward": mean_reward}
