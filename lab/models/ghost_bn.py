"""Ghost Batch Normalization and regime adaptation for large-batch training.

Paper: "Train longer, generalize better: closing the generalization gap in large batch training
of neural networks", Hoffer et al., arXiv 1705.08741 (reference code: eladhoffer/bigBatch).

The paper's claim: the generalization gap of large batches comes from making *too few updates*,
not from the batch size itself. Three fixes, used together:

The model:

1. **Ghost Batch Normalization (GBN).** A batch of ``B_L`` examples is split into
   ``k = ceil(B_L / B_g)`` ghost batches ``x_1..x_k``; each is normalized with its own statistics
   and a shared affine map::

       y_j = gamma * (x_j - mu_j) / sqrt(sigma_j^2 + eps) + beta,   mu_j, sigma_j^2 = mean, var of x_j

   (gamma, beta = the learned scale and shift, eps = BatchNorm's epsilon, B_g = the ghost batch
   size.) The running statistics are updated once per ghost batch (so BN's ``momentum`` is
   applied ``k`` times per step); evaluation uses the running statistics, exactly as BatchNorm.
   The noise of small-batch statistics, which large batches lose, is put back.
2. **Learning-rate rule:** ``eta_L = eta_S * sqrt(B_L / B_S)`` (eta_S tuned at the small batch
   ``B_S``; keeps the update's noise scale).
3. **Regime adaptation:** multiply the number of epochs (and every schedule milestone) by
   ``ceil(B_L / B_S)``, so the large-batch run makes as many updates as the small-batch one.

Where it departs from BatchNorm: only the chunking. With ``B_g >= B`` (one ghost batch) GBN is
``torch.nn.BatchNorm1d``; its output equals BatchNorm applied to each chunk separately.

Choices:
- The chunks are ``torch.tensor_split`` into ``ceil(B / B_g)`` near-equal pieces (equal when
  ``B_g`` divides ``B``, as the paper assumes), so no trailing chunk of one example, which
  BatchNorm cannot normalize, can occur.
- The default ghost batch is 128 (the reference code's ``main_gbn.py``; the paper's own value
  is [unverified]).
- The reference code also clips the gradient norm at 5; the lab leaves clipping to the trainer.
- :func:`regime_adaptation` multiplies epochs and milestones by ``ceil(B_L / B_S)`` (the
  reference's ``main_normal.py`` scales by ``ceil(B/256)`` instead, an inconsistency there).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lab.checks import check_int, check_positive
from lab.registry import register


@register("layer", "ghost_batchnorm",
          paper="Train longer, generalize better: closing the generalization gap in large batch "
                "training of neural networks", arxiv="1705.08741")
class GhostBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training-mode statistics come from ghost batches of ``ghost_batch_size``.

    Args:
        num_features: features C of an input (N, C) or (N, C, L).
        ghost_batch_size (B_g): examples per ghost batch (paper's value 128).
        eps, momentum, affine, track_running_stats: as ``torch.nn.BatchNorm1d``.
    """

    def __init__(self, num_features: int, ghost_batch_size: int = 128, eps: float = 1e-5,
                 momentum: float = 0.1, affine: bool = True, track_running_stats: bool = True):
        check_int("num_features", num_features, minimum=1)
        check_int("ghost_batch_size", ghost_batch_size, minimum=2)
        check_positive("eps", eps)
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.ghost_batch_size = ghost_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(f"x must have shape (N, {self.num_features}) or (N, {self.num_features}, L), "
                             f"got {tuple(x.shape)}")
        if not self.training:
            return super().forward(x)
        n_ghost = math.ceil(x.shape[0] / self.ghost_batch_size)
        if n_ghost == 1:
            return super().forward(x)
        # y_j = gamma (x_j - mu_j) / sqrt(var_j + eps) + beta, one running-stat update per chunk
        out = [super(GhostBatchNorm1d, self).forward(chunk)
               for chunk in torch.tensor_split(x, n_ghost, dim=0)]
        return torch.cat(out, dim=0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_batch_size={self.ghost_batch_size}"


def ghost_batchnorm(model: nn.Module, ghost_batch_size: int = 128) -> nn.Module:
    """Replace every ``nn.BatchNorm1d`` of ``model`` (in place) by a :class:`GhostBatchNorm1d`
    with the same settings, affine parameters and running statistics; returns ``model``."""
    check_int("ghost_batch_size", ghost_batch_size, minimum=2)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm1d) and not isinstance(child, GhostBatchNorm1d):
            ghost = GhostBatchNorm1d(child.num_features, ghost_batch_size, eps=child.eps,
                                     momentum=child.momentum, affine=child.affine,
                                     track_running_stats=child.track_running_stats)
            ghost.load_state_dict(child.state_dict())
            setattr(model, name, ghost)
        else:
            ghost_batchnorm(child, ghost_batch_size)
    return model


def regime_adaptation(lr: float, batch_size: int, base_batch_size: int, epochs: int,
                      milestones: tuple[int, ...] = (), *, scale_lr: bool = True,
                      adapt_regime: bool = True) -> tuple[float, int, tuple[int, ...]]:
    """``(lr_L, epochs_L, milestones_L)`` for batch ``B_L = batch_size`` from a recipe tuned at
    ``B_S = base_batch_size``: ``lr * sqrt(B_L / B_S)`` (if ``scale_lr``) and epochs and
    milestones times ``ceil(B_L / B_S)`` (if ``adapt_regime``).

    Worked example: B_L = 4096, B_S = 128 gives lr x 5.657 and epochs x 32.
    """
    check_positive("lr", lr)
    check_int("batch_size", batch_size, minimum=1)
    check_int("base_batch_size", base_batch_size, minimum=1)
    check_int("epochs", epochs, minimum=1)
    ratio = batch_size / base_batch_size
    lr_l = lr * math.sqrt(ratio) if scale_lr else lr
    factor = math.ceil(ratio) if adapt_regime else 1
    return lr_l, epochs * factor, tuple(m * factor for m in milestones)


__all__ = ["GhostBatchNorm1d", "ghost_batchnorm", "regime_adaptation"]
