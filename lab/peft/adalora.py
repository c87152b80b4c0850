"""AdaLoRA: an SVD-shaped LoRA whose rank budget moves to the matrices that need it.

Paper: "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", Zhang et al., arXiv
2303.10512 (OpenReview lq62uWRJjiY; reference code: QingruZhang/AdaLoRA; equations as in ``peft``
AdaLoRA).

The update: per adapted matrix W0 ∈ ℝ^{d×k}, initial rank r₀::

    ΔW = s/(r₀ + 1e-5) · P·diag(Λ ⊙ m)·Q     P ∈ ℝ^{d×r₀} ("B"), Λ ∈ ℝ^{r₀} ("E"), Q ∈ ℝ^{r₀×k} ("A")
    h  = W0·x + ΔW·x                         s = α (``alpha``), Λ = 0 and P, Q ~ N(0, 0.02²) at init

where m ∈ {0, 1}^{r₀} is the rank mask, so the output equals the base model's at init. Q and P
are kept near-orthogonal by a regulariser added to the loss::

    R = γ · mean over adapted matrices of ( ‖Q·Qᵀ − I‖_F + ‖Pᵀ·P − I‖_F )     γ = orth_reg_weight

Importance of a triplet (P_{:,i}, Λ_i, Q_{i,:}), from the sensitivity |w·∂L/∂w| of each entry w,
smoothed::

    I = |w ⊙ ∂L/∂w|,  Ī ← β1·Ī + (1−β1)·I,  Ū ← β2·Ū + (1−β2)·|I − Ī|,  score = Ī ⊙ Ū
    S_i = score(Λ_i) + mean_j score(Q_{i,j}) + mean_j score(P_{j,i})

Budget (total live ranks) on a cubic schedule from b₀ = Σ r₀ to b_T = target_r × #matrices, with
T = ``total_step``, t the step, t_init/t_final the warm-up and final phases::

    b(t) = b₀                                                   t ≤ t_init
         = b_T                                                  t > T − t_final
         = ⌊(b₀ − b_T)·(1 − (t − t_init)/(T − t_final − t_init))³ + b_T⌋    otherwise

Masking: every ΔT steps in the cubic phase, and every step in the final phase, the triplets whose
S_i is at or below the (b₀ − b(t))-th smallest score get Λ_i = 0 (they may come back later, unless
in the final phase, where the mask is frozen). Importance EMAs are updated while t < T − t_final.
Intuition: singular values whose removal would change the loss most (and most reliably) keep their
rank; the rest is handed to the matrices that need it.

Where it departs from LoRA: the rank of each matrix is not fixed but earned — the increment is
SVD-shaped so a rank can be switched off by zeroing one singular value, and a global budget shrinks
on a schedule.

Choices:
- Pruning sets Λ_i = 0 (``peft`` does the same); the lab also records it in a mask m
  (``rank_mask``) so the learner can see which ranks are alive; ties at the threshold are pruned.
- The final-phase mask is computed once, at entry, and re-applied every step.
- b_T is capped at b₀ (a ``target_r`` above the initial rank keeps every rank).
- Defaults (``peft`` AdaLoraConfig): init_r 12, target_r 8, t_init 0, t_final 0, ΔT 1,
  β1 = β2 = 0.85, orth_reg_weight 0.5; α = 8.

Worked example: 4 matrices, r₀ = 12, target 8 → b₀ = 48, b_T = 32; t_init = t_final = 100,
T = 1000, t = 550 → (1 − 450/800)³ = 0.0837 → b = ⌊33.34⌋ = 33. Call
:meth:`RankAllocator.update_and_allocate` after ``backward()`` and before the gradients are cleared.
"""
from __future__ import annotations

import torch
from torch import nn

from lab.checks import check_int, check_positive, check_range
from lab.peft.core import AdapterLinear, adapters
from lab.registry import register

_PAPER = "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"


@register("peft", "adalora", paper=_PAPER, arxiv="2303.10512")
class AdaLoRALinear(AdapterLinear):
    """``h = W0·x + s/(r₀+1e-5)·P·diag(Λ)·Q·x`` with prunable singular values Λ.

    Args:
        base: the frozen ``nn.Linear``.
        rank: r₀, the initial rank (``init_r``).
        alpha: s, the scaling numerator.
        generator: seeds P and Q.
    """

    def __init__(self, base: nn.Linear, *, rank: int = 12, alpha: float = 8.0,
                 generator: torch.Generator | None = None):
        super().__init__(base)
        self.rank = check_int("rank", rank, minimum=1)
        self.alpha = check_positive("alpha", alpha)
        self.scaling = self.alpha / (rank + 1e-5)
        w = base.weight
        kw = dict(dtype=w.dtype, device=w.device)
        self.lora_A = nn.Parameter(torch.randn(rank, self.in_features, generator=generator, **kw) * 0.02)   # Q
        self.lora_E = nn.Parameter(torch.zeros(rank, 1, **kw))                                          # Λ
        self.lora_B = nn.Parameter(torch.randn(self.out_features, rank, generator=generator, **kw) * 0.02)  # P
        self.register_buffer("rank_mask", torch.ones(rank, dtype=torch.bool, device=w.device))

    def delta_weight(self) -> torch.Tensor:  # (d, k)
        # ΔW = s/(r₀+ε)·P·diag(Λ)·Q
        return self.scaling * (self.lora_B @ (self.lora_A * self.lora_E))

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * ((x @ (self.lora_A * self.lora_E).T) @ self.lora_B.T)   # (..., d)

    def live_rank(self) -> int:
        """Number of unpruned triplets."""
        return int(self.rank_mask.sum())


def orthogonal_regularizer(model: nn.Module, orth_reg_weight: float = 0.5) -> torch.Tensor:
    """γ · mean over AdaLoRA matrices of ‖QQᵀ − I‖_F + ‖PᵀP − I‖_F (add it to the loss)."""
    check_positive("orth_reg_weight", orth_reg_weight, allow_zero=True)
    layers = [m for m in adapters(model).values() if isinstance(m, AdaLoRALinear)]
    if not layers:
        raise ValueError("model has no AdaLoRA layers")
    terms = []
    for m in layers:
        eye = torch.eye(m.rank, dtype=m.lora_A.dtype, device=m.lora_A.device)
        terms.append(torch.linalg.norm(m.lora_A @ m.lora_A.T - eye))    # ‖QQᵀ − I‖_F
        terms.append(torch.linalg.norm(m.lora_B.T @ m.lora_B - eye))    # ‖PᵀP − I‖_F
    return orth_reg_weight * torch.stack(terms).sum() / len(layers)


def budget_schedule(step: int, *, total_step: int, initial_budget: int, target_budget: int,
                    tinit: int = 0, tfinal: int = 0) -> tuple[int, bool]:
    """``(b(t), in_final_phase)`` of the cubic schedule (see the module docstring)."""
    check_int("total_step", total_step, minimum=1)
    check_int("step", step, minimum=0)
    if tinit + tfinal >= total_step:
        raise ValueError(f"tinit + tfinal must be < total_step, got {tinit} + {tfinal} >= {total_step}")
    if target_budget > initial_budget:
        raise ValueError(f"target_budget {target_budget} must not exceed initial_budget {initial_budget}")
    if step <= tinit:
        return initial_budget, False
    if step > total_step - tfinal:
        return target_budget, True
    progress = (step - tinit) / (total_step - tfinal - tinit)
    return int((initial_budget - target_budget) * (1 - progress) ** 3 + target_budget), False


class RankAllocator:
    """AdaLoRA's importance tracker and budget scheduler; call :meth:`update_and_allocate` after
    ``backward()`` and before the gradients are cleared.

    Args:
        model: a model holding :class:`AdaLoRALinear` layers.
        target_r: average final rank per matrix (b_T = target_r × #matrices).
        total_step: T.
        tinit, tfinal: warm-up and final phases (steps).
        deltaT: ΔT, steps between maskings in the cubic phase.
        beta1, beta2: EMA rates of the sensitivity and its uncertainty.
    """

    def __init__(self, model: nn.Module, *, target_r: int = 8, total_step: int, tinit: int = 0,
                 tfinal: int = 0, deltaT: int = 1, beta1: float = 0.85, beta2: float = 0.85):
        self.layers = {n: m for n, m in adapters(model).items() if isinstance(m, AdaLoRALinear)}
        if not self.layers:
            raise ValueError("model has no AdaLoRA layers")
        check_int("target_r", target_r, minimum=0)
        self.total_step = check_int("total_step", total_step, minimum=1)
        self.tinit, self.tfinal = check_int("tinit", tinit, minimum=0), check_int("tfinal", tfinal, minimum=0)
        self.deltaT = check_int("deltaT", deltaT, minimum=1)
        self.beta1 = check_range("beta1", beta1, 0.0, 1.0, hi_open=True)
        self.beta2 = check_range("beta2", beta2, 0.0, 1.0, hi_open=True)
        self.initial_budget = sum(m.rank for m in self.layers.values())
        self.target_budget = min(target_r * len(self.layers), self.initial_budget)
        budget_schedule(0, total_step=total_step, initial_budget=self.initial_budget,
                        target_budget=self.target_budget, tinit=tinit, tfinal=tfinal)   # validates
        self.ipt: dict[int, torch.Tensor] = {}     # Ī per parameter (keyed by id)
        self.unc: dict[int, torch.Tensor] = {}     # Ū per parameter
        self.final_mask_set = False                # the final-phase mask is fixed once chosen

    @torch.no_grad()
    def _update_importance(self) -> None:
        for m in self.layers.values():
            for p in (m.lora_A, m.lora_E, m.lora_B):
                if p.grad is None:
                    continue
                sens = (p * p.grad).abs()                                   # I = |w·∂L/∂w|
                key = id(p)
                if key not in self.ipt:
                    self.ipt[key], self.unc[key] = torch.zeros_like(p), torch.zeros_like(p)
                ipt = self.ipt[key].mul_(self.beta1).add_((1 - self.beta1) * sens)       # Ī
                self.unc[key].mul_(self.beta2).add_((1 - self.beta2) * (sens - ipt).abs())  # Ū

    def _score(self, p: torch.Tensor) -> torch.Tensor:
        key = id(p)
        return self.ipt[key] * self.unc[key] if key in self.ipt else torch.zeros_like(p)

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """``{layer: S (r₀,)}``, S_i = score(Λ_i) + mean_j score(Q_ij) + mean_j score(P_ji)."""
        return {n: self._score(m.lora_E)[:, 0] + self._score(m.lora_A).mean(1) + self._score(m.lora_B).mean(0)
                for n, m in self.layers.items()}

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> None:
        """Zero Λ_i (and the mask) of the b₀ − budget triplets with the lowest scores."""
        scores = self.triplet_scores()
        n_prune = self.initial_budget - budget
        for m in self.layers.values():
            m.rank_mask.fill_(True)
        if n_prune <= 0:
            return
        flat = torch.cat(list(scores.values()))                               # (b₀,)
        threshold = torch.kthvalue(flat, n_prune).values
        for name, m in self.layers.items():
            prune = scores[name] <= threshold
            m.rank_mask.copy_(~prune)
            m.lora_E[prune] = 0.0

    def update_and_allocate(self, step: int) -> int:
        """Update the importance EMAs and mask to the budget of step t; returns b(t)."""
        budget, final = budget_schedule(step, total_step=self.total_step, initial_budget=self.initial_budget,
                                        target_budget=self.target_budget, tinit=self.tinit, tfinal=self.tfinal)
        if step < self.total_step - self.tfinal:
            self._update_importance()
        if final:
            # final phase: keep the mask fixed (computed once at entry) and re-apply it every step
            if not self.final_mask_set:
                self.mask_to_budget(budget)
                self.final_mask_set = True
            with torch.no_grad():
                for m in self.layers.values():
                    m.lora_E[~m.rank_mask] = 0.0
        elif step > self.tinit and step % self.deltaT == 0:
            self.mask_to_budget(budget)
        return budget

    def rank_pattern(self) -> dict[str, int]:
        """``{layer: live rank}``."""
        return {n: m.live_rank() for n, m in self.layers.items()}
