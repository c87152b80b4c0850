"""VADE: a Beta posterior of every prompt's success rate, Thompson sampling, two-scale decay.

Paper: "VADE: Variance-Aware Dynamic Sampling via Online Sample-Level Difficulty Estimation for
Multimodal RL", Hu et al., arXiv 2511.18902 (project page VADE-RL.github.io; code not read).

The rule: VADE predicts, *before* the rollout, which prompts will give mixed groups, from what
earlier rollouts said about each prompt:

    posterior      p_i ~ Beta(α_i, β_i),  prior Beta(α_0, β_0) = Beta(1, 1)
    observe        s_i successes, f_i failures among prompt i's G rollouts:
                   α_i ← α_i + s_i,  β_i ← β_i + f_i
    Thompson       p̃_i ~ Beta(α_i, β_i)  for every prompt of the pool
    select         the n prompts with the largest p̃_i (1 − p̃_i)   (Bernoulli variance, max at 1/2)
    two-scale decay, every step, before adding the new counts:
                   (α_i, β_i) ← (α_0, β_0) + κ   · ((α_i, β_i) − (α_0, β_0))   every prompt (slow)
                   (α_i, β_i) ← (α_0, β_0) + κ_s · ((α_i, β_i) − (α_0, β_0))   prompts unseen for
                                                                   more than ``stale_after`` steps (fast)

where i indexes the prompts of the pool, p_i is prompt i's success rate under the current policy,
G the group size, n the prompts per batch and κ, κ_s ∈ [0, 1] the slow and fast decay factors.
Intuition: GRPO learns nothing from a group whose G rewards are all equal; the decay forgets
evidence gathered under an older policy, so the posterior follows the success rate as it moves, and
a prompt not visited for a while drifts back to the wide prior so Thompson sampling revisits it.
The posterior's mean α/(α + β) tracks the prompt's current success rate.

Where it departs from GRPO: only the choice of prompts; estimator and loss unchanged. Unlike
filtering (``difficulty_filter``, DAPO), which throws uninformative groups away *after* paying for
their rollouts, no extra rollouts are spent.

Choices: the paper's information-gain criterion and decay form are not public in detail (all
[unverified] in the spec, behaviour-tested only):
- Selection score p̃(1 − p̃) (the reward variance the group will have), top-n without replacement.
- Decay form above, with lab defaults κ = 0.95, κ_s = 0.8, ``stale_after`` = 5 steps.
- Rewards in [0, 1] that are not 0/1 (partial credit) count as fractional successes: s = Σ R,
  f = Σ (1 − R).
- Beta draws use the inverse CDF (``scipy.special.betaincinv``) of uniforms from the explicit
  ``torch.Generator``, so a seed fixes the selection.
- Bookkeeping on the CPU: α, β and the last-seen steps live on the CPU whatever the experiment's
  device (the inverse CDF runs in NumPy), so ``select`` needs a CPU generator (the experiment
  ``curriculum`` gives the sampler its own, seeded ``seed + 2``, even on a GPU) and returns CPU ids;
  ``update`` takes CPU tensors.

Example: Beta(9, 1) vs Beta(5, 5): E[p̃(1 − p̃)] = αβ/((α+β)(α+β+1)) = 9/110 = 0.082 vs
25/110 = 0.227 — the prompt the policy solves half the time is chosen far more often.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_int, check_positive, check_range, check_tensor
from lab.registry import register

PAPER = ("VADE: Variance-Aware Dynamic Sampling via Online Sample-Level Difficulty Estimation for "
         "Multimodal RL")
ARXIV = "2511.18902"


def beta_sample(alpha: torch.Tensor, beta: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """One draw p̃ ~ Beta(α, β) per entry (inverse CDF of a uniform from ``generator``), float64."""
    from scipy.special import betaincinv

    check_tensor("alpha", alpha, finite=True)
    check_tensor("beta", beta, shape=tuple(alpha.shape), finite=True)
    if alpha.numel() and (alpha.min() <= 0 or beta.min() <= 0):
        raise ValueError("alpha and beta must be > 0")
    u = torch.rand(alpha.shape, generator=generator, dtype=torch.float64, device=alpha.device)
    return torch.from_numpy(betaincinv(alpha.double().numpy(), beta.double().numpy(), u.numpy()))


@register("sampler", "vade", paper=PAPER, arxiv=ARXIV,
          summary="VADE: Beta posterior per prompt, Thompson-sampled p(1-p), two-scale prior decay")
class VADE:
    """Per-prompt Beta posteriors over a pool of ``n_samples`` prompts.

    Args:
        n_samples: size of the prompt pool (ids 0..n_samples−1).
        prior: (α_0, β_0), the prior pseudo-counts ((1, 1), uniform).
        decay: κ, the slow per-step shrink of every posterior toward the prior (0.95; 1 = off).
        stale_decay: κ_s, the extra per-step shrink of prompts unseen for more than
            ``stale_after`` steps (0.8; 1 = off).
        stale_after: steps without an observation after which a prompt is stale (5).
    """

    def __init__(self, n_samples: int, prior: tuple[float, float] = (1.0, 1.0), decay: float = 0.95,
                 stale_decay: float = 0.8, stale_after: int = 5):
        self.n_samples = check_int("n_samples", n_samples, minimum=1)
        if not isinstance(prior, (tuple, list)) or len(prior) != 2:
            raise ValueError(f"prior must be a pair (alpha0, beta0), got {prior!r}")
        self.prior = (check_positive("prior[0]", prior[0]), check_positive("prior[1]", prior[1]))
        self.decay = check_range("decay", decay, 0.0, 1.0)
        self.stale_decay = check_range("stale_decay", stale_decay, 0.0, 1.0)
        self.stale_after = check_int("stale_after", stale_after, minimum=0)
        self.alpha = torch.full((n_samples,), self.prior[0], dtype=torch.float64, device="cpu")
        self.beta = torch.full((n_samples,), self.prior[1], dtype=torch.float64, device="cpu")
        self.last_seen = torch.full((n_samples,), -1, dtype=torch.long, device="cpu")  # −1: never
        self.step = 0

    def mean(self) -> torch.Tensor:
        """Posterior mean α/(α + β) of every prompt's success rate, (n_samples,)."""
        return self.alpha / (self.alpha + self.beta)

    def expected_variance(self) -> torch.Tensor:
        """E[p(1 − p)] = αβ / ((α + β)(α + β + 1)) under the posterior, (n_samples,)."""
        total = self.alpha + self.beta
        return self.alpha * self.beta / (total * (total + 1.0))

    def select(self, n: int, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Thompson-sample p̃ for every prompt; return the ``n`` with the largest p̃(1 − p̃).

        Returns ``(sample_ids (n,) long, metrics)`` with ``vade/score_mean`` (of the chosen),
        ``vade/posterior_mean`` (their mean α/(α+β)) and ``vade/unseen_frac``.
        """
        n = check_int("n", n, minimum=0)
        if n > self.n_samples:
            raise ValueError(f"n must be <= n_samples={self.n_samples}, got {n}")
        p = beta_sample(self.alpha, self.beta, generator)                          # p̃ (N,)
        score = p * (1.0 - p)
        chosen = torch.argsort(score, descending=True, stable=True)[:n]
        metrics = {"vade/score_mean": float(score[chosen].mean()) if n else 0.0,
                   "vade/posterior_mean": float(self.mean()[chosen].mean()) if n else 0.0,
                   "vade/unseen_frac": float((self.last_seen[chosen] < 0).double().mean()) if n else 0.0}
        return chosen, metrics

    def update(self, sample_ids: torch.Tensor, successes: torch.Tensor, failures: torch.Tensor
               ) -> dict[str, float]:
        """One training step: decay every posterior (two scales), then add the new counts.

        Args:
            sample_ids: (n,) long prompt ids observed this step (distinct).
            successes: (n,) s_i ≥ 0 (Σ of rewards in [0, 1]).
            failures: (n,) f_i ≥ 0 (Σ of 1 − reward).
        """
        check_tensor("sample_ids", sample_ids, ndim=1)
        if sample_ids.is_floating_point():
            raise TypeError(f"sample_ids must be an integer tensor, got {sample_ids.dtype}")
        if sample_ids.numel() and (sample_ids.min() < 0 or sample_ids.max() >= self.n_samples):
            raise ValueError(f"sample_ids must lie in [0, {self.n_samples})")
        if torch.unique(sample_ids).numel() != sample_ids.numel():
            raise ValueError("sample_ids must be distinct (sum the counts of repeated prompts first)")
        for name, counts in (("successes", successes), ("failures", failures)):
            check_tensor(name, counts, shape=(sample_ids.shape[0],), finite=True)
            if counts.numel() and counts.min() < 0:
                raise ValueError(f"{name} must be >= 0")
        a0, b0 = self.prior
        # slow scale: every posterior shrinks toward the prior
        factor = torch.full((self.n_samples,), self.decay, dtype=torch.float64, device="cpu")
        # fast scale: prompts unseen for more than stale_after steps shrink further
        stale = (self.last_seen >= 0) & (self.step - self.last_seen > self.stale_after)
        factor[stale] *= self.stale_decay
        self.alpha = a0 + factor * (self.alpha - a0)
        self.beta = b0 + factor * (self.beta - b0)
        ids = sample_ids.long()
        self.alpha[ids] += successes.double()
        self.beta[ids] += failures.double()
        self.last_seen[ids] = self.step
        self.step += 1
        return {"vade/stale_frac": float(stale.double().mean()),
                "vade/concentration_mean": float((self.alpha + self.beta).mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "prior": list(self.prior), "decay": self.decay,
                "stale_decay": self.stale_decay, "stale_after": self.stale_after,
                "alpha": self.alpha.tolist(), "beta": self.beta.tolist(),
                "last_seen": self.last_seen.tolist(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = VADE(state["n_samples"], tuple(state["prior"]), state["decay"],
                        state["stale_decay"], state["stale_after"])
        restored.alpha = torch.tensor(state["alpha"], dtype=torch.float64, device="cpu")
        restored.beta = torch.tensor(state["beta"], dtype=torch.float64, device="cpu")
        restored.last_seen = torch.tensor(state["last_seen"], dtype=torch.long, device="cpu")
        for name in ("alpha", "beta", "last_seen"):
            if getattr(restored, name).shape != (restored.n_samples,):
                raise ValueError(f"state {name} must hold {restored.n_samples} entries")
        restored.step = check_int("step", state["step"], minimum=0)
        self.__dict__.update(restored.__dict__)


__all__ = ["VADE", "beta_sample"]
