"""DUMP: a bandit over data distributions whose payoff is the mean absolute advantage.

Paper: "DUMP: Automated Distribution-Level Curriculum Learning for RL-based LLM Post-training",
Wang et al., arXiv 2504.09710 (reference code: ZhentingWang/DUMP, ``CurriculumController``).

The rule: each data distribution (source) j is an arm. After every batch, each sample i from source
j adds its sequence-level advantage magnitude to the source's sliding window of the last W samples:

    a_i   = (1/L_i) Σ_t m_{i,t} A_{i,t}          (mean advantage over the valid tokens; A_i for (B,))
    L̂_j   = mean_{i ∈ window_j} |a_i|            (learnability; 0 for an unseen source)
    n_j   = number of samples of source j seen so far (all of them, not only the window)
    s_j   = L̂_j + c · sqrt( 2 ln(Σ_k n_k + 1) / (n_j + 1) )        (UCB score)
    P(j)  = softmax_j(s_j / τ)                     (sampling weights of the next batch)

where A_{i,t} are the (GRPO) advantages of sample i, m_{i,t} its response mask, L_i = Σ_t m_{i,t},
W the window, c ≥ 0 the exploration weight and τ > 0 the softmax temperature. Intuition: a source
whose groups are all right or all wrong gives |A| = 0 (nothing left to learn, or nothing learnable
yet); DUMP moves the batch toward the sources where the advantages are large, while the UCB bonus
keeps revisiting rarely seen sources (their bonus grows as ln N grows).

Where it departs from GRPO: only the choice of each sample's source changes; estimator and loss
are GRPO's (the paper's setting).

Choices:
- Defaults W = 300, τ = 0.1, c = 1 as the reference code.
- The reference code also keeps a Beta posterior of successes per source that does not enter the
  weights; it is not part of the algorithm and is left out.
- ``select(n, generator=...)`` draws the source of each of n samples i.i.d. from P; the prompt
  within a source is the caller's choice (uniform in ``lab.experiments.curricula``).
- Bookkeeping on the CPU: the counts n_j, the windows (Python floats) and the weights live on the
  CPU whatever the experiment's device, so ``select`` needs a CPU generator (the experiment
  ``curriculum`` gives the sampler its own, seeded ``seed + 2``, even on a GPU) and returns CPU ids;
  ``update`` takes CPU tensors (the experiment moves advantages, sources and mask there).

Example: L̂ = [0.5, 0.2], n = [100, 10], c = 1, τ = 0.1: s = [0.80538, 1.12535],
P = [0.03918, 0.96082] — the rarely seen source wins on its bonus.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch

from lab.checks import check_int, check_positive, check_tensor
from lab.registry import register
from lab.rl.core import as_mask, masked_mean

PAPER = "DUMP: Automated Distribution-Level Curriculum Learning for RL-based LLM Post-training"
ARXIV = "2504.09710"


def ucb_scores(learnability: torch.Tensor, counts: torch.Tensor, exploration: float = 1.0) -> torch.Tensor:
    """s_j = L̂_j + c·sqrt(2 ln(Σ n + 1) / (n_j + 1)), all (J,)."""
    check_tensor("learnability", learnability, ndim=1, finite=True)
    check_tensor("counts", counts, shape=(learnability.shape[0],))
    check_positive("exploration", exploration, allow_zero=True)
    n = counts.double()
    bonus = torch.sqrt(2.0 * math.log(float(n.sum()) + 1.0) / (n + 1.0))
    return learnability.double() + exploration * bonus


@register("sampler", "dump", paper=PAPER, arxiv=ARXIV,
          summary="DUMP: softmax-UCB over data sources, payoff = windowed mean |advantage|")
class DUMP:
    """Distribution-level UCB curriculum over ``n_sources`` data sources.

    Args:
        n_sources: J, the number of data distributions (arms).
        window: W, samples kept per source for the learnability L̂_j (300).
        temperature: τ of the softmax over UCB scores (0.1).
        exploration: c, the weight of the UCB bonus (1.0).
    """

    def __init__(self, n_sources: int, window: int = 300, temperature: float = 0.1,
                 exploration: float = 1.0):
        self.n_sources = check_int("n_sources", n_sources, minimum=1)
        self.window = check_int("window", window, minimum=1)
        self.temperature = check_positive("temperature", temperature)
        self.exploration = check_positive("exploration", exploration, allow_zero=True)
        self.windows: list[deque[float]] = [deque(maxlen=window) for _ in range(n_sources)]
        self.counts = torch.zeros(n_sources, dtype=torch.long, device="cpu")      # n_j (on the CPU)

    def learnability(self) -> torch.Tensor:
        """L̂_j = mean |a| over each source's window (0 where empty), (J,) float64."""
        return torch.tensor([sum(w) / len(w) if w else 0.0 for w in self.windows], dtype=torch.float64,
                            device="cpu")

    def scores(self) -> torch.Tensor:
        """The UCB scores s_j (J,)."""
        return ucb_scores(self.learnability(), self.counts, self.exploration)

    def probs(self) -> torch.Tensor:
        """P(j) = softmax(s / τ), (J,) float64."""
        return torch.softmax(self.scores() / self.temperature, dim=0)

    def select(self, n: int, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Draw the source of each of ``n`` samples from P: ``(source_ids (n,) long, metrics)``.

        Metrics: ``dump/weights`` (the J probabilities), ``dump/learnability`` (the J values L̂).
        """
        n = check_int("n", n, minimum=0)
        probs = self.probs()
        ids = (torch.multinomial(probs, n, replacement=True, generator=generator) if n
               else torch.zeros(0, dtype=torch.long, device="cpu"))
        return ids, {"dump/weights": probs.tolist(), "dump/learnability": self.learnability().tolist()}

    def update(self, advantages: torch.Tensor, source_ids: torch.Tensor,
               mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Add each sample's |a_i| to its source's window and count it.

        Args:
            advantages: (B,) sequence advantages or (B, T) token advantages (then ``mask`` needed).
            source_ids: (B,) long, the source of each sample in [0, J).
            mask: (B, T) response mask for token advantages.
        """
        check_tensor("advantages", advantages, ndim=(1, 2), finite=True, dtype_kind="float")
        check_tensor("source_ids", source_ids, shape=(advantages.shape[0],))
        if source_ids.is_floating_point():
            raise TypeError(f"source_ids must be an integer tensor, got {source_ids.dtype}")
        if source_ids.numel() and (source_ids.min() < 0 or source_ids.max() >= self.n_sources):
            raise ValueError(f"source_ids must lie in [0, {self.n_sources}), got "
                             f"{int(source_ids.min())}..{int(source_ids.max())}")
        adv = advantages.detach()
        if adv.dim() == 2:
            if mask is None:
                raise ValueError("mask is required with token advantages (B, T)")
            seq = masked_mean(adv, as_mask(mask, adv), dim=-1)                      # a_i (B,)
        else:
            seq = adv
        for j, a in zip(source_ids.tolist(), seq.abs().tolist()):
            self.windows[j].append(float(a))
        self.counts += torch.bincount(source_ids.long(), minlength=self.n_sources)
        return {"dump/learnability": self.learnability().tolist(), "dump/counts": self.counts.tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {"n_sources": self.n_sources, "window": self.window, "temperature": self.temperature,
                "exploration": self.exploration, "windows": [list(w) for w in self.windows],
                "counts": self.counts.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = DUMP(state["n_sources"], state["window"], state["temperature"], state["exploration"])
        if len(state["windows"]) != restored.n_sources or len(state["counts"]) != restored.n_sources:
            raise ValueError(f"state holds {len(state['windows'])} windows and {len(state['counts'])} "
                             f"counts for n_sources={restored.n_sources}")
        for w, values in zip(restored.windows, state["windows"]):
            w.extend(float(v) for v in values)
        restored.counts = torch.tensor(state["counts"], dtype=torch.long, device="cpu")
        self.__dict__.update(restored.__dict__)


__all__ = ["DUMP", "ucb_scores"]
