"""USEFUL: upsample the examples an early network has not learned, to reduce simplicity bias.

Paper: "Changing the Training Data Distribution to Reduce Simplicity Bias Improves
In-distribution Generalization", Nguyen et al., arXiv 2404.17768.

The algorithm: USEFUL ("UpSample Early For Uniform Learning") changes the training distribution
once:

1. train the network briefly (a few early epochs);
2. per class ``c``, cluster the network outputs ``f(x)`` of the class's training examples with
   k-means, ``k = 2``;
3. the cluster with the *lower mean loss* ``l(x) = CE(f(x), c)`` is the one learned early
   ("easy", explained by the simple feature); every other cluster is "hard";
4. duplicate the hard examples (upsampling ``factor`` 2: each appears twice), then retrain from
   scratch on the new data set (the paper pairs it with SGD or SAM).

where ``f(x) in R^C`` are the logits, ``k`` the clusters per class, ``CE`` the cross-entropy and
``factor`` the copies of each hard example. Intuition: gradient descent first learns the *simple*
(large-margin, few-coordinate) features; examples that can only be classified by the *complex*
features are learned late and poorly, and upsampling them evens out the speed at which features
are learned (simplicity bias).

Where it departs from ERM training: the same loss and optimizer, on a data set where the
early-unlearned examples appear ``factor`` times.

Choices ([unverified] constants):
- The clustered vectors are the logits.
- k-means is Lloyd's algorithm started from the examples of lowest and highest loss (``k`` centres
  spread evenly over the loss order; deterministic), ``iters`` = 20 rounds.
- A class with fewer than ``k`` examples keeps all of them easy.
- The returned index list holds every example once and each hard one ``factor - 1`` more times,
  sorted; ``factor = 1`` is the unchanged data set.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lab.checks import check_int, check_tensor
from lab.registry import register


def kmeans(points: torch.Tensor, init: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Lloyd's k-means from the centers ``init (k, D)``; returns the assignment (N,) in 0..k-1."""
    check_tensor("points", points, ndim=2, dtype_kind="float")
    check_tensor("init", init, ndim=2, dtype_kind="float")
    centers = init.clone()
    assign = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    for _ in range(iters):
        # assign every point to its nearest center
        assign = torch.cdist(points, centers).argmin(dim=1)              # (N,)
        for j in range(centers.shape[0]):
            members = points[assign == j]
            if len(members):
                centers[j] = members.mean(dim=0)
    return assign


def hard_examples(logits: torch.Tensor, labels: torch.Tensor, *, k: int = 2, iters: int = 20) -> torch.Tensor:
    """Boolean mask (N,): examples outside the lowest-loss output cluster of their class."""
    check_tensor("logits", logits, ndim=2, finite=True, dtype_kind="float")
    check_tensor("labels", labels, shape=(logits.shape[0],))
    if labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    check_int("k", k, minimum=2)
    losses = F.cross_entropy(logits, labels, reduction="none")          # (N,)
    hard = torch.zeros(len(labels), dtype=torch.bool, device=logits.device)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        if len(idx) < k:
            continue
        order = losses[idx].argsort()
        # k initial centers spread from the lowest- to the highest-loss example
        init = logits[idx[order[torch.linspace(0, len(idx) - 1, k, device=idx.device).round().long()]]]
        assign = kmeans(logits[idx], init, iters)
        mean_loss = torch.stack([losses[idx][assign == j].mean() if (assign == j).any()
                                 else losses.new_tensor(float("inf")) for j in range(k)])
        hard[idx] = assign != mean_loss.argmin()
    return hard


@register("continual", "useful",
          paper="Changing the Training Data Distribution to Reduce Simplicity Bias Improves "
                "In-distribution Generalization", arxiv="2404.17768")
def useful_upsample(logits: torch.Tensor, labels: torch.Tensor, *, k: int = 2, factor: int = 2,
                    iters: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """USEFUL's new training set: ``(indices, hard)``.

    ``indices`` lists every example once and each hard example ``factor - 1`` more times (sorted);
    ``hard`` is the mask of :func:`hard_examples` computed from the early network's ``logits``.
    """
    check_int("factor", factor, minimum=1)
    hard = hard_examples(logits, labels, k=k, iters=iters)
    everyone = torch.arange(len(labels), device=labels.device)
    extra = everyone[hard].repeat(factor - 1)
    return torch.cat([everyone, extra]).sort().values, hard


__all__ = ["useful_upsample", "hard_examples", "kmeans"]
