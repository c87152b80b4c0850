"""D³S: train on the rollouts with the most advantage variance and, in them, the most useful tokens.

Paper: "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient
Policy Optimization", Wang et al., arXiv 2509.22115 (code only in the paper's supplementary
material).

The rule: after GRPO advantages are computed on the full batch, D³S down-samples at two levels:

    sample level:  S = argmax_{S ⊂ batch, |S| = N_t} Var(A_S)            (across groups)
    token level:   keep the top K_t fraction of the valid tokens of S by score |A_{i,t}|·H_{i,t}
    schedule:      N_t, K_t linear from (N_init, K_init) to (N_final, K_final) over total_steps

where A_i is rollout i's advantage, A_{i,t} its token-level advantage, H_{i,t} the policy's entropy
at token t, Var the population variance, N_t the number of rollouts and K_t the token share kept at
step t. Intuition: GRPO's learning signal is diluted by rollouts whose advantage is ~0 and by tokens
where the policy is already certain; the paper shows that Var(A) of the selected rollouts bounds the
policy-gradient norm from above, so a high-variance subset gives larger, more informative
gradients; starting aggressive (few samples, few tokens) and relaxing to the full batch guards
against over-fitting the high-signal data.

For a fixed size N the variance-maximizing subset of a list of numbers is "the k largest and the
N − k smallest" for some k (moving any inner point outward cannot lower the spread), so the search
is a scan over k = 0…N with prefix sums: O(B log B).

Where it departs from GRPO: the loss sees only the selected rows and tokens (a new mask); the
advantages themselves are unchanged.

Choices (the public material is ambiguous; all [unverified] in the spec):
- The selection rule above is derived here, not copied from the paper's procedure.
- Token-level A is reduced to one number per row (its masked mean) for the sample level.
- Lab schedule defaults: N from 50% to 100% of the batch, K from 20% to 100% of the tokens.
- At least one token is kept in every selected row that has a valid token; ties keep index order.
- All A equal (e.g. 0): every subset has variance 0 and the first N_t rows are returned.
- Selection is deterministic: ``generator`` is accepted for the sampler contract and unused.
- A loop applies it by replacing the loss mask: ``policy_optimization(token_selector="d3s")``
  (the schedule then spans the run's ``steps``); ``token_view`` uses it on one batch.

Example: A = [0.9, 0.9, −0.9, −0.9, 0.2, −0.2], N = 4 -> {0, 1, 2, 3} (Var = 0.81, the maximum).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lab.checks import check_int, check_range, check_tensor
from lab.registry import register
from lab.rl.core import as_mask, expand_advantages, masked_mean

PAPER = ("Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient "
         "Policy Optimization")


def max_variance_subset(values: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (sorted) of the ``n`` entries of ``values`` (B,) with the largest population variance."""
    check_tensor("values", values, ndim=1, finite=True)
    n = check_int("n", n, minimum=0)
    size = values.shape[0]
    if n > size:
        raise ValueError(f"n must be <= the number of values {size}, got {n}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    v = values.detach().double()
    order = torch.argsort(v, stable=True)                                       # ascending
    s = v[order]
    zero = v.new_zeros(1)
    c1, c2 = torch.cat([zero, s.cumsum(0)]), torch.cat([zero, (s * s).cumsum(0)])
    k = torch.arange(n + 1, device=v.device)                       # k largest + (n − k) smallest
    small = n - k
    total = c1[small] + (c1[size] - c1[size - k])
    total_sq = c2[small] + (c2[size] - c2[size - k])
    variance = total_sq / n - (total / n) ** 2                                  # (n + 1,)
    if float(variance.max() - variance.min()) <= 1e-12:
        return torch.arange(n, device=v.device)   # all subsets equal: the first n rows
    best = int(torch.argmax(variance))            # first maximum: ties keep the smallest k
    chosen = torch.cat([order[: n - best], order[size - best:]])
    return torch.sort(chosen).values


def top_token_mask(scores: torch.Tensor, mask: torch.Tensor, keep_frac: float) -> torch.Tensor:
    """Keep the top ``keep_frac`` of valid tokens by score (≥ 1 per row with a valid token)."""
    check_range("keep_frac", keep_frac, 0.0, 1.0, lo_open=True)
    valid = mask.bool()
    n_valid = int(valid.sum())
    if n_valid == 0:
        return valid.clone()
    n_keep = max(1, math.ceil(keep_frac * n_valid))
    flat = torch.where(valid, scores, torch.full_like(scores, -math.inf)).flatten()
    order = torch.argsort(-flat, stable=True)[:n_keep]
    keep = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    keep[order] = True
    keep = keep.view(mask.shape) & valid
    # at least one token in every row that has one: its best-scoring token
    best = torch.argmax(torch.where(valid, scores, torch.full_like(scores, -math.inf)), dim=-1)
    rows = valid.any(-1) & ~keep.any(-1)
    keep[rows, best[rows]] = True
    return keep


def linear_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """start + (end − start)·min(step/total_steps, 1)."""
    return start + (end - start) * min(step / total_steps, 1.0)


@register("sampler", "d3s", paper=PAPER, arxiv="2509.22115",
          summary="Max-Var(A) rollout subset + top |A|·H tokens, relaxed over training (D3S)")
class D3S:
    """Dual-level down-sampler: ``select`` returns the reduced loss mask (B, T).

    Args:
        n_init, n_final: share of the batch's rollouts kept at step 0 and at ``total_steps``.
        k_init, k_final: share of the selected rollouts' valid tokens kept at step 0 / the end.
        total_steps: length of the schedule (steps past it keep the final shares).
    """

    def __init__(self, n_init: float = 0.5, n_final: float = 1.0, k_init: float = 0.2,
                 k_final: float = 1.0, total_steps: int = 100):
        for name, value in (("n_init", n_init), ("n_final", n_final), ("k_init", k_init),
                            ("k_final", k_final)):
            check_range(name, value, 0.0, 1.0, lo_open=True)
        self.n_init, self.n_final, self.k_init, self.k_final = n_init, n_final, k_init, k_final
        self.total_steps = check_int("total_steps", total_steps, minimum=1)
        self.step = 0

    def shares(self, step: int | None = None) -> tuple[float, float]:
        """(N_t, K_t) as shares of the batch / of the tokens at ``step`` (default: own counter)."""
        step = self.step if step is None else check_int("step", step, minimum=0)
        return (linear_schedule(step, self.total_steps, self.n_init, self.n_final),
                linear_schedule(step, self.total_steps, self.k_init, self.k_final))

    def select(self, advantages: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, *,
               step: int | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The D³S loss mask (B, T) bool: rows outside S and low-score tokens set to False.

        Args:
            advantages: (B,) or (B, T) advantages of the full batch (GRPO's in the paper).
            entropy: (B, T) token entropies H.
            mask: (B, T) the full response mask.
            step: training step for the schedule (default: the sampler's own counter).
            generator: unused (the selection is deterministic), part of the sampler contract.

        Metrics: ``d3s/n_frac``, ``d3s/k_frac`` (the schedule), ``d3s/var_selected``,
        ``d3s/var_all``, ``d3s/token_frac`` (kept / all valid tokens).
        """
        check_tensor("entropy", entropy, ndim=2, dtype_kind="float")
        mask_f = as_mask(mask, entropy)
        valid = mask_f.bool()
        adv = expand_advantages(advantages.detach().to(entropy.dtype), mask_f)   # (B, T)
        seq_adv = advantages.detach() if advantages.dim() == 1 else masked_mean(adv, valid, dim=-1)
        n_frac, k_frac = self.shares(step)
        n_rows = max(1, round(n_frac * seq_adv.shape[0]))
        rows = max_variance_subset(seq_adv, n_rows)                              # (N_t,)
        in_subset = torch.zeros(seq_adv.shape[0], dtype=torch.bool, device=seq_adv.device)
        in_subset[rows] = True
        # token score |A_{i,t}|·H_{i,t}
        scores = adv.abs() * entropy.detach()
        new_mask = top_token_mask(scores, valid & in_subset[:, None], k_frac)
        metrics = {"d3s/n_frac": n_frac, "d3s/k_frac": k_frac,
                   "d3s/var_selected": float(seq_adv[rows].var(unbiased=False)) if len(rows) else 0.0,
                   "d3s/var_all": float(seq_adv.var(unbiased=False)),
                   "d3s/token_frac": float(new_mask.sum() / valid.sum().clamp_min(1))}
        return new_mask, metrics

    def update(self) -> dict[str, float]:
        """Advance the schedule by one training step."""
        self.step += 1
        return {"d3s/step": float(self.step)}

    def state_dict(self) -> dict[str, Any]:
        return {"n_init": self.n_init, "n_final": self.n_final, "k_init": self.k_init,
                "k_final": self.k_final, "total_steps": self.total_steps, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = D3S(state["n_init"], state["n_final"], state["k_init"], state["k_final"],
                       state["total_steps"])
        restored.step = check_int("step", state["step"], minimum=0)
        self.__dict__.update(restored.__dict__)


__all__ = ["D3S", "linear_schedule", "max_variance_subset", "top_token_mask"]
