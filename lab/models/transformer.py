"""A tiny causal transformer (GPT-style, pre-LayerNorm), small enough to train with RL on a CPU.

    h_0 = E_tok[x] + E_pos[0..L)                         (B, L, d)
    h_l = h_{l−1} + Attn(LN(h_{l−1})) ; h_l = h_l + MLP(LN(h_l))      l = 1..n_layers
    z   = W_out · LN(h_n)                                 (B, L, V) next-token logits

Attention is causal multi-head self-attention (``F.scaled_dot_product_attention``), the MLP is
``d -> 4d -> d`` with GELU. An optional value head ``v = w_v · LN(h_n)`` (B, L) is the critic for
PPO/GAE. The model exposes ``forward_hidden`` and ``get_output_embeddings`` so
:func:`lab.rl.logprobs` can compute log-probs chunk by chunk from hidden states without ever
holding the (B, L, V) logits; ``generate`` and ``score`` follow :mod:`lab.models.policy`.
``decode`` runs the model incrementally with a KV cache (per block, the keys and values of the
positions seen so far) and ``cached_next_logits`` builds on it the ``next_logits`` that
:func:`lab.models.policy.generate` accepts, for many completions of the same prefixes (the Monte
Carlo values of ``lab.experiments.segments``); ``generate`` itself recomputes every position.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from lab.checks import check_int
from lab.models.policy import Generation, Scored, generate


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, device: torch.device | str | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model, device=device), nn.LayerNorm(d_model, device=device)
        self.qkv = nn.Linear(d_model, 3 * d_model, device=device)
        self.proj = nn.Linear(d_model, d_model, device=device)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model, device=device), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model, device=device))

    def forward(self, h: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(B, L, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))                        # (B, H, L, d/H)
        if attn_mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = h + self.proj(a.transpose(1, 2).reshape(B, L, d))
        return h + self.mlp(self.ln2(h))

    def cached(self, h: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``forward`` for ``h`` (B, L, d), the positions right after the ``past`` keys and values
        (each (B, H, L_past, d/H), or None): causal attention over past and new positions.
        Returns the new hidden states and the keys/values of all L_past + L positions."""
        B, L, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(B, L, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))                        # (B, H, L, d/H)
        if past is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            if L == 1:                                                          # the newest token sees all
                a = F.scaled_dot_product_attention(q, k, v)
            else:                                                               # query i sees keys <= L_past + i
                sees = torch.ones(L, k.shape[2], dtype=torch.bool, device=h.device).tril(k.shape[2] - L)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=sees)
        h = h + self.proj(a.transpose(1, 2).reshape(B, L, d))
        return h + self.mlp(self.ln2(h)), (k, v)


class TinyTransformer(nn.Module):
    """Causal transformer LM.

    Args:
        vocab_size: V.
        d_model: width d (64).
        n_layers: transformer blocks (2).
        n_heads: attention heads (4); must divide ``d_model``.
        max_len: longest input (prompt + response).
        value_head: add a scalar value head (critic).
        generator: draws the initial weights (normal, std 0.02); None = the global generator.
        device: where the parameters live (default: the current default device); ``generator``
            must be on the same device.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 max_len: int = 64, value_head: bool = False, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        check_int("vocab_size", vocab_size, minimum=2)
        check_int("d_model", d_model, minimum=1)
        check_int("n_layers", n_layers, minimum=1)
        check_int("n_heads", n_heads, minimum=1)
        check_int("max_len", max_len, minimum=1)
        if d_model % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model})")
        self.vocab_size, self.max_len = vocab_size, max_len
        self.tok_emb = nn.Embedding(vocab_size, d_model, device=device)
        self.pos_emb = nn.Embedding(max_len, d_model, device=device)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, device) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, device=device)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False, device=device)
        self.value_head = nn.Linear(d_model, 1, device=device) if value_head else None
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02, generator=generator)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @classmethod
    def for_task(cls, task, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, value_head: bool = False,
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> "TinyTransformer":
        """A model sized for a ``toy_envs`` token task."""
        return cls(task.vocab_size, d_model, n_layers, n_heads, max_len=task.prompt_len + task.max_new_tokens,
                   value_head=value_head, generator=generator, device=device)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids -> (B, L, d) final hidden states (after the last LayerNorm)."""
        B, L = input_ids.shape
        if L > self.max_len:
            raise ValueError(f"input_ids has {L} tokens, more than max_len={self.max_len}")
        dev = input_ids.device
        h = self.tok_emb(input_ids) + self.pos_emb(torch.arange(L, device=dev))
        attn_mask = None
        if attention_mask is not None:
            causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
            keys = attention_mask.bool()[:, None, None, :]                     # (B, 1, 1, L)
            attn_mask = causal & (keys | torch.eye(L, dtype=torch.bool, device=dev))   # a row always sees itself
        for block in self.blocks:
            h = block(h, attn_mask)
        return self.ln_f(h)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) -> (B, L, V) next-token logits."""
        return self.lm_head(self.forward_hidden(input_ids, attention_mask))

    def next_logits(self, prompts: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """(B, V) logits of the token after ``prompts`` + ``prefix``."""
        h = self.forward_hidden(torch.cat([prompts, prefix], dim=1))
        return self.lm_head(h[:, -1])

    def decode(self, input_ids: torch.Tensor, cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
               ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Incremental decoding with a KV cache: ``input_ids`` (B, L) are the tokens right after the
        ``cache``'s positions (None: from position 0). Returns their final hidden states (B, L, d),
        as :meth:`forward_hidden` of the whole sequence would give them, and the cache of every
        position so far (per block, keys and values (B, H, L_total, d/H))."""
        B, L = input_ids.shape
        start = 0 if cache is None else cache[0][0].shape[2]
        if start + L > self.max_len:
            raise ValueError(f"the cache holds {start} positions and input_ids {L} more, more than "
                             f"max_len={self.max_len}")
        h = self.tok_emb(input_ids) + self.pos_emb(torch.arange(start, start + L, device=input_ids.device))
        new = []
        for i, block in enumerate(self.blocks):
            h, kv = block.cached(h, None if cache is None else cache[i])
            new.append(kv)
        return self.ln_f(h), new

    @torch.no_grad()
    def cached_next_logits(self, prompts: torch.Tensor, prefix: torch.Tensor | None = None, repeat: int = 1
                           ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A KV-cached ``next_logits(suffix)`` for :func:`lab.models.policy.generate`.

        ``prompts`` (B, P) + ``prefix`` (B, c) are encoded once, then each of the B rows stands for
        ``repeat`` rows (row i -> rows i·repeat .. i·repeat + repeat − 1, as ``repeat_interleave``),
        so ``repeat`` completions of one prefix share its encoding. ``generate`` passes the suffix
        sampled so far, one token longer each call; only its newest token is encoded. The logits
        equal ``next_logits(prompts, prefix + suffix)`` up to float rounding (tested).
        """
        check_int("repeat", repeat, minimum=1)
        ids = prompts if prefix is None else torch.cat([prompts, prefix], dim=1)
        hidden, cache = self.decode(ids)
        first = self.lm_head(hidden[:, -1])                                     # (B, V)
        if repeat > 1:
            first = first.repeat_interleave(repeat, dim=0)
            cache = [(k.repeat_interleave(repeat, dim=0), v.repeat_interleave(repeat, dim=0)) for k, v in cache]
        state = {"cache": cache, "length": 0}

        def next_logits(suffix: torch.Tensor) -> torch.Tensor:                  # (B·repeat, t) -> (B·repeat, V)
            t = suffix.shape[1]
            if t == 0:
                return first
            if t != state["length"] + 1:
                raise ValueError(f"the suffix must grow by one token per call: had {state['length']}, got {t}")
            hidden, state["cache"] = self.decode(suffix[:, -1:], state["cache"])
            state["length"] = t
            return self.lm_head(hidden[:, -1])

        return next_logits

    def generate(self, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None, eos_id: int | None = None,
                 pad_id: int = 0, token_sampler: Any = None) -> Generation:
        """Sample responses; see :func:`lab.models.policy.generate`."""
        return generate(self, prompts, max_new_tokens, temperature, generator, eos_id, pad_id, token_sampler)

    def score(self, prompts: torch.Tensor, responses: torch.Tensor, temperature: float = 1.0) -> Scored:
        """Log-probs (with grad), entropies and values (if a value head) of ``responses`` (B, T)."""
        from lab.rl.token_logprobs import logprobs

        P, T = prompts.shape[1], responses.shape[1]
        input_ids = torch.cat([prompts, responses], dim=1)                   # (B, P+T)
        h = self.forward_hidden(input_ids)                                   # one pass for both heads
        logp, entropy = logprobs(self, input_ids, temperature=temperature, hidden=h)   # (B, P+T−1)
        values = None
        if self.value_head is not None:
            values = self.value_head(h[:, P - 1:P + T - 1])[..., 0]          # value of each state
        return Scored(logp[:, P - 1:], entropy[:, P - 1:], values)
