"""Per-token log-probs and entropies of a causal LM, in chunks along the sequence.

For input ids ``x`` (B, L) and next-token logits ``z_t = f(x_{≤t}) / τ`` (V,):

    logprobs[:, t] = log softmax(z_t)[x_{t+1}]            t = 0 .. L−2     (B, L−1)
    entropy[:, t]  = −Σ_v softmax(z_t)_v log softmax(z_t)_v                  (B, L−1)

Computing ``log_softmax`` of all logits at once holds several (B, L, V) tensors (the log-softmax,
the probabilities, their product, and for backward the saved activations); at B = 8, L = 512,
V = 32k each is 0.5 GB. Here the sequence is cut into chunks of ``chunk_size`` positions:

- if the model exposes its final hidden states and output layer (``forward_hidden`` +
  ``get_output_embeddings`` for lab models, ``base_model`` + ``get_output_embeddings`` for Hugging
  Face causal LMs), the logits of one chunk are made from the hidden states, reduced, and
  dropped, so no (B, L, V) tensor ever exists;
- otherwise the model's logits (``.logits`` or a tensor) are reduced chunk by chunk (the logits
  themselves are the model's; only the log-softmax is never held whole).

Under autograd each chunk is a small ``autograd.Function`` that keeps only its inputs and recomputes
its (B, C, V) logits in backward (∂ℓ/∂z = onehot(y) − softmax(z)), so training holds no more than
one chunk of logits at a time either. Entropies carry a gradient as well (∂H/∂z = −p ⊙ (log p + H),
for an entropy bonus); it is computed only when something downstream uses it, and losses that
merely weight tokens by their entropy detach it. ``response_mask`` (B, L) restricts the work to the
columns from the first response token on and zeroes positions that predict non-response tokens.
Models with a final logit transform inside ``forward`` (e.g. soft-capping) should use the logits path
(pass a wrapper that returns logits).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lab.checks import check_int, check_positive

DEFAULT_CHUNK_ELEMENTS = 2 ** 24


class _ChunkLogprobs(torch.autograd.Function):
    """Token log-probs of one chunk, z = (x Wᵀ + b)/τ (or z = x/τ for logits), recomputed in backward.

    forward: ℓ = z[y] − logsumexp(z) (B, C) and the entropy H (B, C); saves only x (and W, b).
    backward: ∂ℓ/∂z = onehot(y) − p and ∂H/∂z = −p ⊙ (log p + H), p = softmax(z), so with upstream
    g (B, C) for ℓ and h (B, C) for H:
        g_z = [g·(onehot(y) − p) − h·p ⊙ (log p + H)]/τ,  g_x = g_z W (or g_z),  g_W = Σ g_zᵀ x,  g_b = Σ g_z.
    Nothing of size (B, C, V) is kept between forward and backward; an unused output's term is skipped.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, targets, temperature):
        z = _chunk_logits(x, weight, bias, temperature)                          # (B, C, V)
        logp = torch.log_softmax(z, dim=-1)
        token_logp = logp.gather(-1, targets[..., None])[..., 0]                 # (B, C)
        entropy = -(logp.exp() * logp).sum(-1)                                   # (B, C)
        ctx.save_for_backward(x, weight, bias, targets)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)                                         # None for unused outputs
        return token_logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        x, weight, bias, targets = ctx.saved_tensors
        z = _chunk_logits(x, weight, bias, ctx.temperature)
        g = None if grad_logp is None else grad_logp[..., None] / ctx.temperature          # g/τ
        if grad_entropy is None:                                                 # the usual case
            grad_z = torch.softmax(z, dim=-1)                                    # (B, C, V)
            grad_z *= -g                                                         # − g p / τ
        else:
            logp = torch.log_softmax(z, dim=-1)
            p = logp.exp()
            entropy = -(p * logp).sum(-1, keepdim=True)
            h = grad_entropy[..., None] / ctx.temperature
            grad_z = (logp + entropy).mul_(p).mul_(-h)                           # − h p (log p + H) / τ
            if g is not None:
                grad_z.addcmul_(p, g, value=-1.0)                                # − g p / τ
        if g is not None:                                                        # + g onehot(y) / τ
            grad_z.scatter_add_(-1, targets[..., None], g.to(grad_z.dtype))
        if weight is None:
            return grad_z.to(x.dtype), None, None, None, None
        grad_x = (grad_z @ weight.float()).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (grad_z.flatten(0, 1).T @ x.flatten(0, 1).float()).to(weight.dtype) \
            if ctx.needs_input_grad[1] else None
        grad_b = grad_z.sum((0, 1)).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


def _chunk_logits(x, weight, bias, temperature):
    z = x.float() if weight is None else nn.functional.linear(x.float(), weight.float(),
                                                              None if bias is None else bias.float())
    return z / temperature


def _hidden_and_head(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """``(hidden (B, L, d), output layer)`` when the model exposes them, else None."""
    if not hasattr(model, "get_output_embeddings"):
        return None
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return None
    if hasattr(model, "forward_hidden"):
        return model.forward_hidden(input_ids, attention_mask), head
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        return None
    out = base(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden, head


def _logits_of(model: Callable[..., Any], input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None) -> torch.Tensor:
    out = model(input_ids, attention_mask=attention_mask) if attention_mask is not None else model(input_ids)
    logits = out.logits if hasattr(out, "logits") else out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise TypeError("model must return logits (B, L, V) as a tensor or as `.logits`")
    return logits


def logprobs(model: Callable[..., Any], input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             response_mask: torch.Tensor | None = None, chunk_size: int | None = None,
             temperature: float = 1.0, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs (B, L−1), entropy (B, L−1))`` of ``input_ids[:, 1:]`` under ``model``.

    Args:
        model: a causal LM returning logits (``.logits`` or a tensor); lab and Hugging Face models
            are reduced from hidden states (see the module docstring).
        input_ids: (B, L) token ids (prompt + response).
        attention_mask: (B, L) 1 for real tokens, passed to the model.
        response_mask: (B, L) 1 on response tokens; other positions of the outputs are 0.
        chunk_size: positions per chunk (default: about 2**24 logits per chunk).
        temperature: τ, logits are divided by it (use the sampling temperature).
        hidden: the model's final hidden states (B, L, d) when the caller already has them (e.g. to
            share one forward pass with a value head); needs ``get_output_embeddings()``.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError("input_ids must be a (B, L) integer tensor")
    B, L = input_ids.shape
    if L < 2:
        raise ValueError(f"input_ids needs at least 2 tokens, got {L}")
    check_positive("temperature", temperature)
    for name, m in (("attention_mask", attention_mask), ("response_mask", response_mask)):
        if m is not None and tuple(m.shape) != (B, L):
            raise ValueError(f"{name} must have the shape of input_ids {(B, L)}, got {tuple(m.shape)}")
    targets = input_ids[:, 1:]                                                    # (B, L−1)
    valid = response_mask[:, 1:].bool() if response_mask is not None else None
    start = 0
    if valid is not None:
        cols = valid.any(0).nonzero()
        start = int(cols[0]) if len(cols) else L - 1
    if hidden is not None:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(head, nn.Linear):
            raise TypeError("hidden needs a model whose get_output_embeddings() is an nn.Linear")
        if hidden.dim() != 3 or tuple(hidden.shape[:2]) != (B, L) or hidden.shape[-1] != head.in_features:
            raise ValueError(f"hidden must have shape {(B, L, head.in_features)}, got {tuple(hidden.shape)}")
        found = hidden, head
    else:
        found = _hidden_and_head(model, input_ids, attention_mask)
    if found is not None:
        source, head = found
        weight, bias = head.weight, head.bias
    else:
        source, weight, bias = _logits_of(model, input_ids, attention_mask), None, None
    width = source.shape[-1] if weight is None else weight.shape[0]
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // max(1, B * width))
    check_int("chunk_size", chunk_size, minimum=1)

    lp_chunks, ent_chunks = [], []
    for lo in range(start, L - 1, chunk_size):
        hi = min(lo + chunk_size, L - 1)
        lp, ent = _ChunkLogprobs.apply(source[:, lo:hi], weight, bias, targets[:, lo:hi], float(temperature))
        lp_chunks.append(lp)
        ent_chunks.append(ent)
    dtype = lp_chunks[0].dtype if lp_chunks else torch.float32
    pad = torch.zeros(B, start, dtype=dtype, device=source.device)
    token_logp = torch.cat([pad, *lp_chunks], dim=1)                              # (B, L−1)
    entropy = torch.cat([pad, *ent_chunks], dim=1)
    if valid is not None:
        token_logp = torch.where(valid, token_logp, torch.zeros((), dtype=dtype))
        entropy = torch.where(valid, entropy, torch.zeros((), dtype=dtype))
    return token_logp, entropy


def naive_logprobs(model: Callable[..., Any], input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference computation: the full (B, L, V) log-softmax at once (tests, benchmark)."""
    logits = _logits_of(model, input_ids, attention_mask)[:, :-1]
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    token_logp = logp.gather(-1, input_ids[:, 1:, None])[..., 0]
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy
