"""VAS: steer a frozen policy at decoding time with a small learned value model.

Paper: "Value Augmented Sampling for Language Model Alignment and Personalization", Han et al.,
arXiv 2405.06639 (reference code: idanshen/Value-Augmented-Sampling, ``VASLogitsProcessor``).

The algorithm: the base policy π_0 is never updated. A small value model V learns, on π_0's own
samples, how much reward a partial response ending in token a will collect; decoding adds the
centred values of the k most likely next tokens to the base logits:

    value training   data y ~ π_0(· | x); q_t = V(x ⊕ y_{≤t}) (the value after token t);
                     λ-returns  R̂_t = r_t + γ((1 − λ) q_{t+1} + λ R̂_{t+1})   (TD(λ), q after the end = 0)
                     L_V = ½ · mean over valid tokens of (q_t − R̂_t)²
    decoding         K = top-k(z) of the base logits z (B, V)
                     Q̄ = (1/k) Σ_{a∈K} V(s ⊕ a)
                     z'_a = z_a + β · (V(s ⊕ a) − Q̄)   for a ∈ K,   z'_a = z_a otherwise

where x is the prompt, y a response, r_t the per-token reward (the outcome reward on the last valid
token), γ the discount, λ the TD(λ) mixing, s the current prefix, z the base logits over the
vocabulary (of size V in ``(B, V)``; V(·) is the value model), k the number of candidates and
β ≥ 0 the guidance strength. Intuition: β trades reward for closeness
to π_0 (β = 0 is π_0 itself); centring makes the shift of a token relative to its top-k neighbours.
Because only logits move, the same frozen π_0 can be served with several value models (rewards
composed, or personalized) without retraining it.

Where it departs from PPO/GRPO: no policy gradient at all — the value model is fitted by
regression on π_0's data (π_0's value, not the optimal one: one step of policy improvement, the
paper's view), and the improvement happens in the sampler.

Choices:
- Defaults k = 20, β = 1.0, γ = 1, λ = 0.95 as the reference code's ``generate`` defaults; k ≥ V
  uses every token. Tokens outside the top-k keep their logits (they are not masked).
- The λ-returns reuse ``advantage/gae`` (R̂ = Â + q with the value *after* each token), with
  ``token_rewards`` holding the outcome reward on the last valid token.
- The value model is any module mapping token ids (N, L) to values (N, L):
  :class:`TokenValueModel` is a tiny causal transformer with a scalar head (the paper's value
  model is a small LM with a value head); :class:`TabularValue` is the table
  Q[c(x), t, y_t] that matches the lab's open-loop tabular policies (fast, for the lessons).
  ``update`` takes one Adam step on L_V.
- :class:`ValueGuidedPolicy` wraps π_0 and the sampler into a policy with ``next_logits`` /
  ``generate``, so ``lab.rl.rollout`` samples from it unchanged.
- Devices: unlike the prompt samplers (DUMP, VADE), VAS keeps no bookkeeping of its own and no
  generator: the value model lives where the caller builds it (``device=`` of
  :class:`TokenValueModel` / :class:`TabularValue`; ``value_augmented_sampling`` puts it on
  ``cfg.device``, the GPU when there is one), and ``generate`` draws from the generator the caller
  passes, on the logits' device.

Example: z = [2, 1, 0], k = 2, V(s⊕a) for the top two = [0.2, 0.6] -> centred [−0.2, 0.2],
β = 1 -> z' = [1.8, 1.2, 0].
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lab.checks import check_int, check_positive, check_range, check_tensor
from lab.models.policy import Generation, generate
from lab.models.transformer import TinyTransformer
from lab.registry import register
from lab.rl.core import as_mask, check_rewards, masked_mean
from lab.rl.ppo import gae
from lab.rl.rollout import token_rewards

PAPER = "Value Augmented Sampling for Language Model Alignment and Personalization"
ARXIV = "2405.06639"


def vas_logits(logits: torch.Tensor, candidate_values: torch.Tensor, top_ids: torch.Tensor,
               beta: float = 1.0) -> torch.Tensor:
    """z'_a = z_a + β(V_a − mean_K V) for the candidates a ∈ K (B, k); other logits unchanged."""
    check_tensor("logits", logits, ndim=2, dtype_kind="float")
    check_tensor("top_ids", top_ids, ndim=2)
    check_tensor("candidate_values", candidate_values, shape=tuple(top_ids.shape), finite=True)
    if top_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"top_ids must have {logits.shape[0]} rows like logits, got {tuple(top_ids.shape)}")
    check_positive("beta", beta, allow_zero=True)
    centred = candidate_values - candidate_values.mean(-1, keepdim=True)          # (B, k)
    return logits.scatter_add(-1, top_ids.long(), beta * centred.to(logits.dtype))


class TokenValueModel(nn.Module):
    """A tiny causal transformer with a scalar head: token ids (N, L) -> values (N, L).

    Args: ``vocab_size``, ``d_model`` (32), ``n_layers`` (1), ``n_heads`` (2), ``max_len``,
    ``device`` (where the weights live; default: the current default device).
    """

    def __init__(self, vocab_size: int, d_model: int = 32, n_layers: int = 1, n_heads: int = 2,
                 max_len: int = 64, device: torch.device | str | None = None):
        super().__init__()
        self.body = TinyTransformer(vocab_size, d_model, n_layers, n_heads, max_len, value_head=True,
                                    device=device)

    @classmethod
    def for_task(cls, task: Any, d_model: int = 32, n_layers: int = 1, n_heads: int = 2,
                 device: torch.device | str | None = None) -> "TokenValueModel":
        """Sized for a ``toy_envs`` token task (prompt + response + one candidate token)."""
        return cls(task.vocab_size, d_model, n_layers, n_heads, task.prompt_len + task.max_new_tokens + 1,
                   device=device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.body.value_head(self.body.forward_hidden(input_ids))[..., 0]   # (N, L)


class TabularValue(nn.Module):
    """Open-loop value table: the value after token y_t of prompt x is ``Q[c(x), t, y_t]``.

    ``c(x)`` is the mixed-radix index of the prompt (as :class:`lab.models.policy.TabularPolicy`);
    earlier response tokens are not read, which is exact (up to a constant shared by the top-k
    candidates, removed by the centring) for an open-loop policy and a per-position reward.

    Args: ``vocab_size``, ``prompt_len``, ``max_new_tokens``, ``device`` (where the table lives).
    """

    def __init__(self, vocab_size: int, prompt_len: int, max_new_tokens: int,
                 device: torch.device | str | None = None):
        super().__init__()
        check_int("vocab_size", vocab_size, minimum=2)
        self.prompt_len = check_int("prompt_len", prompt_len, minimum=1)
        self.max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        self.table = nn.Parameter(torch.zeros(vocab_size ** prompt_len, max_new_tokens, vocab_size, device=device))
        self.register_buffer("radix", vocab_size ** torch.arange(prompt_len - 1, -1, -1, device=device),
                             persistent=False)

    @classmethod
    def for_task(cls, task: Any, device: torch.device | str | None = None) -> "TabularValue":
        return cls(task.vocab_size, task.prompt_len, task.max_new_tokens, device=device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        P = self.prompt_len
        T = input_ids.shape[1] - P
        if not 0 <= T <= self.max_new_tokens:
            raise ValueError(f"input_ids must hold the {P} prompt tokens and at most "
                             f"{self.max_new_tokens} response tokens, got {input_ids.shape[1]} tokens")
        c = (input_ids[:, :P].long() * self.radix).sum(-1)                           # (N,)
        q = self.table[c[:, None], torch.arange(T, device=c.device)[None, :], input_ids[:, P:].long()]  # (N, T)
        return torch.cat([torch.zeros(input_ids.shape[0], P, dtype=q.dtype, device=q.device), q], dim=1)


@register("sampler", "vas", paper=PAPER, arxiv=ARXIV,
          summary="Value Augmented Sampling: top-k logits + beta * centred values of a small value model")
class VAS:
    """Decoding-time value guidance (``select``) and value regression on π_0's samples (``update``).

    Args:
        value_model: module mapping token ids (N, L) to values (N, L).
        k: top-k candidates per step (20).
        beta: β, the guidance strength (1.0).
        gamma, lam: γ and λ of the TD(λ) value targets (1.0, 0.95).
        lr: Adam learning rate of the value model (1e-3).
    """

    def __init__(self, value_model: nn.Module, k: int = 20, beta: float = 1.0, gamma: float = 1.0,
                 lam: float = 0.95, lr: float = 1e-3):
        if not isinstance(value_model, nn.Module):
            raise TypeError(f"value_model must be a torch.nn.Module, got {type(value_model).__name__}")
        self.value_model = value_model
        self.k = check_int("k", k, minimum=1)
        self.beta = check_positive("beta", beta, allow_zero=True)
        self.gamma = check_range("gamma", gamma, 0.0, 1.0)
        self.lam = check_range("lam", lam, 0.0, 1.0)
        self.lr = check_positive("lr", lr)
        self.optimizer = torch.optim.Adam(value_model.parameters(), lr=lr)
        self.updates = 0

    @torch.no_grad()
    def candidate_values(self, prompts: torch.Tensor, prefix: torch.Tensor, top_ids: torch.Tensor
                         ) -> torch.Tensor:
        """V(x ⊕ prefix ⊕ a) for each candidate a of ``top_ids`` (B, k) -> (B, k)."""
        B, k = top_ids.shape
        context = torch.cat([prompts, prefix], dim=1).long()                      # (B, L)
        ids = torch.cat([context.repeat_interleave(k, dim=0), top_ids.reshape(-1, 1).long()], dim=1)
        return self.value_model(ids)[:, -1].view(B, k).float()                     # (B, k)

    def guide(self, logits: torch.Tensor, prompts: torch.Tensor, prefix: torch.Tensor
              ) -> tuple[torch.Tensor, dict[str, float]]:
        """The guided logits z' (B, V) for the next token after ``prompts`` ⊕ ``prefix``."""
        check_tensor("logits", logits, ndim=2, dtype_kind="float")
        k = min(self.k, logits.shape[-1])
        top_ids = logits.topk(k, dim=-1).indices                                   # (B, k)
        values = self.candidate_values(prompts, prefix, top_ids)                   # (B, k)
        guided = vas_logits(logits.detach().float(), values, top_ids, self.beta)
        return guided, {"vas/value_spread": float((values.max(-1).values - values.min(-1).values).mean())}

    def select(self, logits: torch.Tensor, prompts: torch.Tensor, prefix: torch.Tensor, *,
               temperature: float = 1.0, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
        """Sample one token per row from softmax(z'/τ): ``(tokens (B,), metrics)``."""
        check_positive("temperature", temperature)
        guided, metrics = self.guide(logits, prompts, prefix)
        tokens = torch.multinomial(torch.softmax(guided / temperature, -1), 1, generator=generator)[:, 0]
        return tokens, metrics

    def value_loss(self, prompts: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor,
                   rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """L_V = ½ mean_m (q − R̂)² on responses (B, T) of π_0 with outcome rewards (B,)."""
        check_tensor("responses", responses, ndim=2)
        rewards = check_rewards(rewards)
        if rewards.shape != (responses.shape[0],):
            raise ValueError(f"rewards must have shape ({responses.shape[0]},), got {tuple(rewards.shape)}")
        m = as_mask(mask, responses.float())
        P, T = prompts.shape[1], responses.shape[1]
        q = self.value_model(torch.cat([prompts, responses], dim=1).long())[:, P:P + T]   # (B, T)
        r = token_rewards(rewards.float(), m.bool())                                       # (B, T)
        _, gae_metrics = gae(r, q.detach().float(), m, gamma=self.gamma, lam=self.lam, whiten=False)
        returns = gae_metrics["returns"]                                                   # R̂ (B, T)
        loss = 0.5 * masked_mean((q.float() - returns) ** 2, m)
        return loss, {"value_loss": float(loss.detach()), "returns_mean": gae_metrics["returns_mean"]}

    def update(self, prompts: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor,
               rewards: torch.Tensor) -> dict[str, float]:
        """One Adam step on L_V with a batch of π_0's samples."""
        loss, metrics = self.value_loss(prompts, responses, mask, rewards)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k, "beta": self.beta, "gamma": self.gamma, "lam": self.lam, "lr": self.lr,
                "updates": self.updates, "value_model": self.value_model.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k = check_int("k", state["k"], minimum=1)
        self.beta = check_positive("beta", state["beta"], allow_zero=True)
        self.gamma = check_range("gamma", state["gamma"], 0.0, 1.0)
        self.lam = check_range("lam", state["lam"], 0.0, 1.0)
        self.lr = check_positive("lr", state["lr"])
        self.updates = check_int("updates", state["updates"], minimum=0)
        self.value_model.load_state_dict(state["value_model"])
        self.optimizer.load_state_dict(state["optimizer"])


class ValueGuidedPolicy:
    """π_0 with VAS logits: ``next_logits`` = the guided logits; ``generate`` as any lab policy.

    A plain object, not an ``nn.Module``: π_0's parameters are not exposed to any optimizer and
    are left exactly as they were (flags included).
    """

    def __init__(self, base: nn.Module, sampler: VAS):
        if not hasattr(base, "next_logits"):
            raise TypeError(f"base must have next_logits(prompts, prefix), got {type(base).__name__}")
        self.base = base
        self.sampler = sampler

    @torch.no_grad()
    def next_logits(self, prompts: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return self.sampler.guide(self.base.next_logits(prompts, prefix).float(), prompts, prefix)[0]

    def generate(self, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None, eos_id: int | None = None,
                 pad_id: int = 0) -> Generation:
        """Sample from the guided logits; see :func:`lab.models.policy.generate`."""
        return generate(self, prompts, max_new_tokens, temperature, generator, eos_id, pad_id)


__all__ = ["TabularValue", "TokenValueModel", "VAS", "ValueGuidedPolicy", "vas_logits"]
