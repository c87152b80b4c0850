"""Inverted hinge loss (LoKU): unlearn a sequence by making each target token lose to its runner-up.

Paper: "Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs" (LoKU), Cha et al.,
arXiv 2408.06621 (reference code: csm9493/efficient-llm-unlearning, ``TOFU/dataloader.py``).

The loss::

    p_t = softmax(z_t)
    IHL_t = max(0, 1 + p_t(x_t) − max_{v ≠ x_t} p_t(v))
    L = mean over forget tokens [ IHL_t ]  [ + c · NLL(retain) ]

where z_t (V,) are the logits predicting forget token x_t, V the vocabulary size, the forget tokens
are those of the mask with labels ≠ ``ignore_index``, and c (``retain_coef``) weights the optional
NLL of retain data. Intuition: the gradient lowers p(x_t) and raises the runner-up
v* = argmax_{v≠x_t} p(v) (a plausible replacement), instead of pushing mass anywhere.

Where it departs from gradient ascent on the NLL (the unlearning baseline): ascent is unbounded — it
keeps pushing p(x_t) → 0 and the mass it removes lands anywhere, which wrecks fluency; IHL ∈ [0, 2]
has a bounded per-token gradient aimed at the runner-up. With margin 1 the hinge never switches off
(p(x_t) − p(v*) ≥ −1), so the loss keeps acting until p(x_t) → 0.

Choices:
- The lab always applies softmax; the released helper applies it only when some value lies outside
  [0, 1] (logits already in [0, 1] would be read as probabilities).
- Margin 1 (``margin``, a Crammer–Singer hinge, not squared); ``mask`` is combined with
  ``labels != ignore_index``.
- The retain term is the token-mean NLL (:func:`lab.preference.sft.sft`) with c = 1 by default, as
  the TOFU code's IHL(forget) + NLL(retain).
- No forget token: loss 0 with the graph kept.
- LoKU's Fisher-weighted LoRA initialization is out of scope here.

Example (spec): p(x_t) = 0.6, runner-up 0.3 → IHL = 1.3; after unlearning p(x_t) = 0.1,
runner-up 0.5 → 0.6.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_nonneg, check_positive, check_tensor
from lab.registry import register
from lab.rl.core import as_mask, masked_mean, valid_values
from lab.preference.sft import sft


@register("preference_loss", "inverted_hinge", paper="Towards Robust and Parameter-Efficient Knowledge "
          "Unlearning for LLMs", arxiv="2408.06621")
def inverted_hinge(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *,
                   margin: float = 1.0, ignore_index: int = -100, retain_logprobs: torch.Tensor | None = None,
                   retain_mask: torch.Tensor | None = None,
                   retain_coef: float = 1.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mean over forget tokens of ``max(0, margin + p(x_t) − max_{v≠x_t} p(v))`` (+ retain NLL).

    Args:
        logits: (B, T, V) logits predicting each forget token (already shifted).
        labels: (B, T) target token ids; ``ignore_index`` marks tokens outside the loss.
        mask: optional (B, T) forget-token mask (combined with ``labels != ignore_index``).
        margin: the hinge margin (1.0, a Crammer–Singer hinge, not squared).
        retain_logprobs, retain_mask: optional (B', T') log-probs of retain data, for ``+ c·NLL``.
        retain_coef: c.
    """
    check_tensor("logits", logits, ndim=3, dtype_kind="float")
    check_tensor("labels", labels, shape=tuple(logits.shape[:2]))
    if labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    check_positive("margin", margin)
    check_nonneg("retain_coef", retain_coef)
    if logits.shape[-1] < 2:
        raise ValueError("logits need at least 2 classes (a target and a runner-up)")
    valid = labels != ignore_index
    if mask is not None:
        valid = valid & as_mask(mask, labels.float(), "mask").bool()
    if ((labels < 0) | (labels >= logits.shape[-1]))[valid].any():
        raise ValueError(f"labels must lie in [0, {logits.shape[-1]}) on forget tokens")
    # finite logits wherever a forget token is scored; other positions may hold anything
    logits = valid_values("logits", logits.float(), valid)
    probs = torch.softmax(logits, dim=-1)                                           # (B, T, V)
    target = torch.where(valid, labels, torch.zeros_like(labels)).long()
    p_target = probs.gather(-1, target[..., None])[..., 0]                           # (B, T)
    # max over v ≠ x_t: mask the target out
    others = probs.masked_fill(torch.nn.functional.one_hot(target, probs.shape[-1]).bool(), -1.0)
    p_runner_up, runner_up = others.max(-1)                                          # (B, T)
    ihl = torch.relu(margin + p_target - p_runner_up)                                 # (B, T)
    loss = masked_mean(ihl, valid)
    metrics: dict[str, Any] = {"ihl/loss": float(loss.detach()),
                               "ihl/target_prob": float(masked_mean(p_target.detach(), valid)),
                               "ihl/runner_up_prob": float(masked_mean(p_runner_up.detach(), valid)),
                               "ihl/target_top_frac": float(masked_mean((p_target > p_runner_up).float(), valid)),
                               "num_tokens": float(valid.sum())}
    if retain_logprobs is not None:
        if retain_mask is None:
            raise ValueError("retain_mask is required with retain_logprobs")
        retain_loss, _ = sft(retain_logprobs, retain_mask)
        metrics["ihl/retain_nll"] = float(retain_loss.detach())
        loss = loss + retain_coef * retain_loss
    metrics["loss"] = float(loss.detach())
    return loss, metrics
