"""Ensembling and distillation: the two levers of "Pre-training under infinite compute".

Paper: "Pre-training under infinite compute", Kim et al., arXiv 2509.14786.

Setting: data are fixed, compute is not. Two findings the lab turns into tools. (i) Regularize
much harder than usual: the optimal weight decay is about 30× the standard value (a standard 0.1
becomes ≈ 3; an experiment knob, not code here). (ii) Ensembles of K independently trained models
(different seeds, same data) reach a lower loss asymptote than any single regularized model, and
distilling the ensemble into a smaller student keeps most of the gain (83% for an 8× smaller
student in the paper).

The model: the ensemble predicts with the average of its members' probabilities::

    p_ens(y | x) = (1/K)·Σ_k softmax(f_k(x))_y         (regression: the mean of the outputs)

where f_k(x) are the logits of member k and K the number of members; and distillation trains a
student f_s to match it::

    L_distill = KL(softmax(log p_ens(· | x)/T) ‖ softmax(f_s(x)/T))·T²   (regression: ‖f_s(x) − mean_k f_k(x)‖²)

with T the distillation temperature (at T = 1 the target is p_ens itself).

Why it helps: the members' errors from their different random initializations and data orders are
partly independent, so averaging cancels the variance part of the error, which a single model,
however long it trains on the same data, cannot remove.

Where it departs from a single model: K models instead of one, trained independently on the same
data; only their predictions are combined (no weight averaging, unlike :mod:`lab.merge.mwa`).

Choices:
- Probability (not logit) averaging; :class:`Ensemble` returns log p_ens (computed as a
  logsumexp of the members' log-softmax minus log K).
- Distillation temperature T = 1 by default; at T ≠ 1 the teacher's log-probabilities are divided
  by T too, and the loss is multiplied by T² (Hinton's gradient scaling).
- :func:`distill` trains the student with Adam on minibatches drawn with replacement from
  ``inputs`` (``torch.randint`` with the caller's ``generator``); the teacher's targets are
  computed once, without gradients.
"""
from __future__ import annotations

import math

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lab.checks import check_choice, check_int, check_positive
from lab.registry import register


@register("merge", "ensemble", paper="Pre-training under infinite compute", arxiv="2509.14786")
class Ensemble(nn.Module):
    """Average the predictions of independently trained members.

    Args:
        members: the K trained models (same input and output shapes).
        task: ``"classification"`` (forward returns log of the mean probability) or
            ``"regression"`` (forward returns the mean output).
    """

    def __init__(self, members: Sequence[nn.Module], task: str = "classification"):
        super().__init__()
        if len(members) == 0 or not all(isinstance(m, nn.Module) for m in members):
            raise ValueError("members must be a non-empty sequence of nn.Module")
        self.members = nn.ModuleList(members)
        self.task = check_choice("task", task, ("classification", "regression"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([m(x) for m in self.members])                      # (K, N, C)
        if self.task == "regression":
            return outs.mean(0)                                              # mean_k f_k(x)
        # log p_ens = log mean_k softmax(f_k) = logsumexp_k log_softmax(f_k) − log K
        return torch.logsumexp(F.log_softmax(outs, dim=-1), dim=0) - math.log(len(outs))


def distill(student: nn.Module, teacher: nn.Module, inputs: torch.Tensor, *, steps: int = 200, lr: float = 1e-2,
            temperature: float = 1.0, batch_size: int = 64, generator: torch.Generator | None = None) -> list[float]:
    """Train ``student`` (Adam) to match ``teacher`` (e.g. an :class:`Ensemble`) on ``inputs``.

    Classification teachers return log-probabilities (as :class:`Ensemble` does); for a regression
    ensemble the student regresses the mean output. Returns the per-step distillation losses.
    """
    check_int("steps", steps, minimum=1)
    check_positive("lr", lr)
    check_positive("temperature", temperature)
    check_int("batch_size", batch_size, minimum=1)
    regression = getattr(teacher, "task", "classification") == "regression"
    with torch.no_grad():
        targets = teacher(inputs)                                            # (N, C)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator,
                            device=generator.device if generator is not None else inputs.device).to(inputs.device)
        out = student(inputs[idx])
        if regression:
            loss = F.mse_loss(out, targets[idx])
        else:
            # KL(p_teacher ‖ p_student at temperature T) · T²
            log_q = F.log_softmax(out / temperature, dim=-1)
            log_p = F.log_softmax(targets[idx] / temperature, dim=-1)
            loss = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
