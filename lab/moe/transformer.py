"""A tiny causal MoE transformer language model (self-contained, one file, nanoGPT-style).

    tokens (B, S) -> embedding + learned positions -> n_layers x [x += Attn(LN(x)); x += MoE(LN(x))]
                  -> LN -> linear head -> logits (B, S, V)

Each block's feed-forward is a :class:`~lab.moe.layer.MoELayer` with its own router and its own
balancer (a bias controller keeps per-layer biases). ``forward`` returns the logits and the list of
per-layer :class:`~lab.moe.router.RouterOutput`; :meth:`MoETransformer.aux_loss` pools the layers'
auxiliary loss the way Hugging Face does (the layers' tokens count as one batch: one
``E sum_i f_i P_i`` over all layers for ``switch_aux``, the mean over all layers' tokens for
``z_loss``, the mean over every layer's sequences for ``seq_aux``), so a ``router_aux_loss_coef``
from a Hugging Face config means the same here; :meth:`MoETransformer.update_balancers` feeds each
layer's load to its controller after the optimizer step.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lab.checks import check_int, check_tensor
from lab.moe.layer import MoELayer
from lab.moe.router import RouterOutput, is_controller


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (``scaled_dot_product_attention`` with ``is_causal``)."""

    def __init__(self, d_model: int, n_heads: int, *, device: torch.device | str | None = None):
        super().__init__()
        check_int("n_heads", n_heads, minimum=1)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, device=device)
        self.proj = nn.Linear(d_model, d_model, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, d) -> (B, S, d)
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)  # (B, S, d) each
        q, k, v = (t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, S, d/H)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, S, d/H)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class MoEBlock(nn.Module):
    """``x += Attn(LN(x)); x += MoE(LN(x))``."""

    def __init__(self, d_model: int, n_heads: int, moe: MoELayer, *, device: torch.device | str | None = None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model, device=device), nn.LayerNorm(d_model, device=device)
        self.attn = CausalSelfAttention(d_model, n_heads, device=device)
        self.moe = moe

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        x = x + self.attn(self.ln1(x))
        y, route = self.moe(self.ln2(x))
        return x + y, route


class MoETransformer(nn.Module):
    """Tiny causal MoE language model.

    Args:
        vocab: V.
        d_model: width d.
        n_layers: number of blocks, each with an MoE feed-forward.
        n_heads: attention heads.
        n_experts, k: experts per layer and experts per token.
        max_len: longest sequence (learned positional embeddings).
        make_balancer: ``layer_index -> balancer or None``, called once per layer (each layer
            needs its own controller state).
        capacity_factor, priority, score_fn, impl: passed to every :class:`MoELayer`.
        generator: draws every initial weight (normal, std 0.02, as GPT-2; expert matrices
            scaled by 1/sqrt(fan_in)), so a seed fixes the model without global seeding; it must
            live on ``device``.
        device: where every parameter lives.
    """

    def __init__(self, vocab: int = 32, d_model: int = 32, n_layers: int = 2, n_heads: int = 2,
                 n_experts: int = 8, k: int = 2, max_len: int = 64,
                 make_balancer: Callable[[int], Any] | None = None, *, capacity_factor: float | None = None,
                 priority: str = "sequence", score_fn: str = "softmax", impl: str = "auto",
                 generator: torch.Generator | None = None, device: torch.device | str | None = None):
        super().__init__()
        check_int("vocab", vocab, minimum=2)
        check_int("d_model", d_model, minimum=1)
        check_int("n_layers", n_layers, minimum=1)
        check_int("max_len", max_len, minimum=1)
        self.max_len = max_len
        self.tok = nn.Embedding(vocab, d_model, device=device)
        self.pos = nn.Embedding(max_len, d_model, device=device)
        self.blocks = nn.ModuleList(
            MoEBlock(d_model, n_heads, MoELayer(d_model, n_experts, k,
                                                balancer=make_balancer(i) if make_balancer else None,
                                                capacity_factor=capacity_factor, priority=priority,
                                                score_fn=score_fn, impl=impl, device=device), device=device)
            for i in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, device=device)
        self.head = nn.Linear(d_model, vocab, device=device)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every weight from ``generator``: N(0, 0.02^2) for linear/embedding weights, zero
        biases, unit LayerNorm scales, experts ``N(0, 1/fan_in)``."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02, generator=generator)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, MoELayer):
                for w in (module.w1, module.w2):
                    nn.init.normal_(w, 0.0, w.shape[1] ** -0.5, generator=generator)
                nn.init.zeros_(module.b1)
                nn.init.zeros_(module.b2)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[RouterOutput]]:
        check_tensor("tokens", tokens, ndim=2)
        if tokens.is_floating_point():
            raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"tokens has {tokens.shape[1]} positions, max_len is {self.max_len}")
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(pos)  # (B, S, d)
        routes = []
        for block in self.blocks:
            x, route = block(x)
            routes.append(route)
        return self.head(self.ln_f(x)), routes  # (B, S, V)

    def aux_loss(self, routes: list[RouterOutput], attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The auxiliary loss pooled over the layers as Hugging Face pools it (0 for controllers and no
        balancer): the loss balancer is applied once to the layers' stacked logits ``(L, B, S, E)``
        and indices ``(L, B, S, k)``; ``attention_mask (B, S)`` drops padding in every layer."""
        if len(routes) != len(self.blocks):
            raise ValueError(f"routes must hold one RouterOutput per layer ({len(self.blocks)}), got {len(routes)}")
        balancer = self.blocks[0].moe.router.balancer
        if balancer is None or is_controller(balancer):
            return routes[0].logits.new_zeros(())
        logits = torch.stack([r.logits for r in routes])  # (L, B, S, E)
        indices = torch.stack([r.indices for r in routes])  # (L, B, S, k)
        return balancer.loss(logits, indices, attention_mask)[0]

    def update_balancers(self, routes: list[RouterOutput]) -> list[dict[str, Any]]:
        """Call ``update(load)`` on every layer's bias controller; returns their stats."""
        stats = []
        for block, route in zip(self.blocks, routes):
            balancer = block.moe.router.balancer
            if is_controller(balancer):
                stats.append(balancer.update(route.load))
        return stats


__all__ = ["CausalSelfAttention", "MoEBlock", "MoETransformer"]
