"""Continual pre-training strategies: spend the step budget on data that keeps the stability gap small.

Paper: "Efficient Continual Pre-training by Mitigating the Stability Gap", Guo et al.,
arXiv 2406.14833.

The algorithm: a budget of ``S`` steps of batch ``B`` on a new-domain corpus ``D_new``
(``|D_new| >= S B``) and the original pre-training data ``D_old``; the paper's three strategies
change *which data* the budget is spent on:

1. **subset, several epochs** -- instead of one pass over ``D_new``, draw a subset of
   ``rho |D_new|`` examples and cycle over it for several epochs (``S B / (rho |D_new|)`` epochs);
2. **high-quality subset** -- the subset is the top ``rho`` fraction of ``D_new`` by a quality
   score ``q(x)`` (the paper uses a quality classifier; here the caller passes the scores);
3. **pre-training-like mixture** -- a fraction ``m`` of every batch is drawn from ``D_old``, so the
   data distribution moves less abruptly.

where ``rho`` = ``subset_fraction`` and ``m`` = ``mix``. Intuition: when a pre-trained model
continues pre-training on a new domain, its performance first *drops* and only later recovers (the
stability gap of continual learning, seen in LLM continual pre-training); a small, good subset
seen several times gets through the drop faster, and old data in every batch makes it shallower.

Where it departs from plain continual pre-training: ``subset="all", mix=0`` is that baseline, a
single pass over D_new (reshuffled when exhausted); the strategies only change the batch plan,
not the loss or the optimizer.

Choices ([unverified] constants):
- ``rho`` and ``m`` are free; the strategies compose (a quality subset with a mixture, ...).
- The subset keeps ``max(1, round(rho |D_new|))`` examples; the random subset is drawn once.
- The mixed part of a batch is ``round(m B)`` examples drawn with replacement from ``D_old``.
- Epochs over the pool are reshuffled passes, concatenated.
- Without a ``generator`` the plan uses a CPU generator seeded with 0 (the same plan every call);
  the plan is CPU indices, which index data on any device.

:func:`cpt_batches` returns the batch plan ``[(new_idx, old_idx)] * S``; the trainer indexes its two
corpora with it.
"""
from __future__ import annotations

from typing import Literal

import torch

from lab.checks import check_choice, check_int, check_range, check_tensor
from lab.registry import register

Subset = Literal["all", "random", "quality"]


def _cycle(pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` indices from ``pool``: epochs of reshuffled passes, concatenated."""
    epochs = -(-n // len(pool))
    return torch.cat([pool[torch.randperm(len(pool), generator=generator, device="cpu")]
                      for _ in range(epochs)])[:n]


@register("continual", "cpt_strategies",
          paper="Efficient Continual Pre-training by Mitigating the Stability Gap",
          arxiv="2406.14833")
def cpt_batches(n_new: int, n_old: int, steps: int, batch_size: int, *, subset: Subset = "all",
                subset_fraction: float = 0.2, mix: float = 0.0, quality: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batch plan of continual pre-training: per step ``(new_idx, old_idx)``.

    Args:
        n_new, n_old: sizes of the new-domain corpus and of the original pre-training data.
        steps (S), batch_size (B): the training budget.
        subset: ``"all"`` (single pass over D_new), ``"random"`` (a random subset, several
            epochs) or ``"quality"`` (the highest-``quality`` subset, several epochs).
        subset_fraction (rho): fraction of D_new kept by ``"random"`` / ``"quality"``.
        mix (m): fraction of each batch drawn from D_old (pre-training-like mixture).
        quality: scores ``q (n_new,)``, higher = better; required for ``subset="quality"``.
        generator: the source of every random choice (a CPU generator: the plan is CPU indices,
            which index data on any device).
    """
    check_int("n_new", n_new, minimum=1)
    check_int("n_old", n_old, minimum=0)
    check_int("steps", steps, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_choice("subset", subset, ("all", "random", "quality"))
    check_range("subset_fraction", subset_fraction, 0.0, 1.0, lo_open=True)
    check_range("mix", mix, 0.0, 1.0, hi_open=True)
    if mix > 0 and n_old == 0:
        raise ValueError("mix > 0 needs pre-training data: n_old must be >= 1")
    generator = generator or torch.Generator(device="cpu").manual_seed(0)
    keep = max(1, int(round(subset_fraction * n_new)))
    if subset == "all":
        pool = torch.arange(n_new, device="cpu")
    elif subset == "random":
        pool = torch.randperm(n_new, generator=generator, device="cpu")[:keep]
    else:
        if quality is None:
            raise ValueError("quality scores are required for subset='quality'")
        check_tensor("quality", quality, shape=(n_new,), finite=True)
        pool = quality.argsort(descending=True)[:keep].cpu()
    n_mix = int(round(mix * batch_size))
    n_take = batch_size - n_mix
    new = _cycle(pool, steps * n_take, generator).reshape(steps, n_take)              # (S, B - m B)
    old = (torch.randint(0, max(n_old, 1), (steps, n_mix), generator=generator, device="cpu") if n_mix
           else torch.zeros(steps, 0, dtype=torch.long, device="cpu"))                 # (S, m B)
    return [(new[s], old[s]) for s in range(steps)]


__all__ = ["cpt_batches"]
