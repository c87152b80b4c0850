"""Token policies for the RL lessons: the shared sampling loop and a tabular softmax policy.

Every policy here maps a prompt (B, P) and a response prefix to next-token logits ``z`` (B, V) and
samples with temperature τ from ``π_τ = softmax(z / τ)``. :func:`generate` runs that loop for any
policy with a ``next_logits(prompts, prefix)`` method and returns a :class:`Generation`:

    tokens   (B, T) long   sampled tokens, ``pad_id`` after the first ``eos_id``
    logprobs (B, T) float  log π_τ(y_t | x, y_<t) of the sampled tokens (0 on padding), detached
    entropy  (B, T) float  H(π_τ(· | x, y_<t)) = −Σ_v π_τ(v) log π_τ(v), exact, detached
                           (``score`` returns it with grad, for an entropy bonus)
    mask     (B, T) bool   response tokens, up to and including ``<eos>``

``score(prompts, responses, temperature)`` recomputes log-probs (with grad) and entropies of given
responses under the current parameters, scaled by the same τ, so the first PPO epoch has ratio 1.

:class:`TabularPolicy` keeps one logit vector per (prompt, position): ``z = θ[c(x), t]`` with
``c(x)`` the mixed-radix index of the prompt tokens. It is *open-loop* (the logits do not depend on
the tokens already generated), which is exact for one-step tasks (the token bandit, where θ[c] are
exactly the softmax logits of the closed-form analysis) and enough for tasks with one correct
answer per prompt. An optional value table ``V[c(x), t]`` is the critic for PPO/GAE.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lab.checks import check_int, check_positive


@dataclass
class Generation:
    """Sampled responses; see the module docstring for the fields."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    entropy: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) response lengths."""
        return self.mask.sum(-1)


@dataclass
class Scored:
    """Per-token log-probs, entropies (both with grad) and optional values (B, T)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None = None


def frozen_reference(policy: nn.Module) -> Any:
    """π_ref for a policy: ``policy.reference()`` when it defines one (a Hugging Face policy: its
    reference model, or itself with the LoRA adapters off), else a frozen deep copy of it now."""
    if hasattr(policy, "reference"):
        return policy.reference()
    return copy.deepcopy(policy).requires_grad_(False)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = −Σ_v softmax(z)_v · log_softmax(z)_v over the last dim."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def generate(policy: nn.Module, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             generator: torch.Generator | None = None, eos_id: int | None = None,
             pad_id: int = 0, token_sampler: Any = None,
             next_logits: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Generation:
    """Sample up to ``max_new_tokens`` tokens per prompt from ``policy.next_logits``.

    Stops a row after ``eos_id`` (when given); stops early when every row has stopped.
    ``next_logits(prefix (B, t)) -> (B, V)`` replaces ``policy.next_logits(prompts, prefix)``; a
    model with a KV cache passes one that feeds only the newest token (``lab.rl.hf``). Every
    tensor is created on ``prompts.device``.
    ``temperature = 0`` is greedy decoding (log-probs and entropies then refer to τ = 1).
    ``token_sampler`` (an object with ``select(logits, generator=...) -> (tokens, metrics)``, e.g.
    HAPO's adaptive temperature) picks each token from the raw logits instead of sampling π_τ; the
    recorded log-probs and entropies are still those of π_τ, so the first PPO epoch keeps ratio 1
    (as in verl, whose trainer recomputes the old log-probs at the base temperature).
    """
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_positive("temperature", temperature, allow_zero=True)
    if prompts.dim() != 2 or prompts.is_floating_point():
        raise ValueError(f"prompts must be a (B, P) integer tensor, got {prompts.dtype} {tuple(prompts.shape)}")
    if next_logits is None:
        def next_logits(prefix):
            return policy.next_logits(prompts, prefix)
    B, dev = prompts.shape[0], prompts.device
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    logprobs = torch.zeros(B, max_new_tokens, device=dev)
    entropy = torch.zeros(B, max_new_tokens, device=dev)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    for t in range(max_new_tokens):
        logits = next_logits(tokens[:, :t]).float()                              # (B, V)
        scaled = logits / temperature if temperature > 0 else logits
        logp = torch.log_softmax(scaled, dim=-1)                                 # (B, V)
        if temperature > 0 and token_sampler is not None:
            token = token_sampler.select(logits, generator=generator)[0].long()  # (B,)
        elif temperature > 0:
            token = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]  # (B,)
        else:
            token = logits.argmax(-1)
        tokens[:, t] = torch.where(alive, token, torch.full_like(token, pad_id))
        logprobs[:, t] = torch.where(alive, logp.gather(-1, token[:, None])[:, 0], 0.0)
        entropy[:, t] = torch.where(alive, -(logp.exp() * logp).sum(-1), 0.0)
        mask[:, t] = alive
        if eos_id is not None:
            alive = alive & (token != eos_id)
            if not alive.any():
                break
    return Generation(tokens, logprobs, entropy, mask)


class TabularPolicy(nn.Module):
    """Softmax policy with one logit vector per (prompt, response position): ``z = θ[c(x), t]``.

    Args:
        vocab_size: V.
        prompt_len: P (prompts have a fixed length).
        max_new_tokens: T, the response positions with their own logits.
        value_head: also learn a value table ``V[c(x), t]`` (a critic for PPO/GAE).
        init_std: standard deviation of the initial logits (0 = uniform policy).
        generator: draws the initial logits when ``init_std > 0`` (on ``device``).
        device: where the tables live (default: the current default device).
    """

    MAX_TABLE = 50_000_000

    def __init__(self, vocab_size: int, prompt_len: int, max_new_tokens: int, value_head: bool = False,
                 init_std: float = 0.0, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        check_int("vocab_size", vocab_size, minimum=2)
        check_int("prompt_len", prompt_len, minimum=1)
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        n_contexts = vocab_size ** prompt_len
        if n_contexts * max_new_tokens * vocab_size > self.MAX_TABLE:
            raise ValueError(f"a table for {n_contexts} prompts x {max_new_tokens} positions x "
                             f"{vocab_size} tokens is too large; use lab.models.TinyTransformer")
        self.vocab_size, self.prompt_len, self.max_new_tokens = vocab_size, prompt_len, max_new_tokens
        init = torch.randn(n_contexts, max_new_tokens, vocab_size, generator=generator, device=device) * init_std
        self.logits = nn.Parameter(init)                                 # θ (C, T, V)
        self.values = (nn.Parameter(torch.zeros(n_contexts, max_new_tokens, device=device)) if value_head
                       else None)
        self.register_buffer("radix", vocab_size ** torch.arange(prompt_len - 1, -1, -1, device=device),
                             persistent=False)

    @classmethod
    def for_task(cls, task, value_head: bool = False, init_std: float = 0.0,
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> "TabularPolicy":
        """A table sized for a ``toy_envs`` token task."""
        return cls(task.vocab_size, task.prompt_len, task.max_new_tokens, value_head, init_std, generator,
                   device)

    def context_index(self, prompts: torch.Tensor) -> torch.Tensor:
        """(B,) c(x) = Σ_j x_j V^(P−1−j)."""
        if prompts.shape[1] != self.prompt_len:
            raise ValueError(f"prompts must have {self.prompt_len} tokens, got {prompts.shape[1]}")
        return (prompts.long() * self.radix).sum(-1)

    def next_logits(self, prompts: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """(B, V) logits of position ``prefix.shape[1]`` (open-loop: the prefix itself is not read)."""
        return self.logits[self.context_index(prompts), prefix.shape[1]]

    def generate(self, prompts: torch.Tensor, max_new_tokens: int | None = None, temperature: float = 1.0,
                 generator: torch.Generator | None = None, eos_id: int | None = None,
                 pad_id: int = 0, token_sampler: Any = None) -> Generation:
        """Sample responses; see :func:`generate`."""
        n = self.max_new_tokens if max_new_tokens is None else min(max_new_tokens, self.max_new_tokens)
        return generate(self, prompts, n, temperature, generator, eos_id, pad_id, token_sampler)

    def score(self, prompts: torch.Tensor, responses: torch.Tensor, temperature: float = 1.0) -> Scored:
        """Log-probs and exact entropies (both with grad) and values of ``responses`` (B, T)."""
        T = responses.shape[1]
        c = self.context_index(prompts)
        logits = self.logits[c, :T] / (temperature if temperature > 0 else 1.0)   # (B, T, V)
        logp = torch.log_softmax(logits, dim=-1)
        token_logp = logp.gather(-1, responses.long()[..., None])[..., 0]          # (B, T)
        entropy = -(logp.exp() * logp).sum(-1)
        values = self.values[c, :T] if self.values is not None else None
        return Scored(token_logp, entropy, values)
