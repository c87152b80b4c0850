"""IBCL: a credal-set knowledge base that returns a model for any task trade-off, zero-shot.

Paper: "IBCL: Zero-shot Model Generation for Task Trade-offs in Continual Learning", Lu et al.,
arXiv 2305.14782 (later retitled "... under Stability-Plasticity Trade-offs").

The algorithm: a user may want any trade-off between K tasks, given as a preference
``w in simplex^K`` (``w_i >= 0``, ``sum_i w_i = 1``). IBCL (Imprecise Bayesian Continual
Learning) keeps a *knowledge base*: a finitely generated credal set, the convex hull of a finite
set of parameter distributions ``Q_1..Q_m`` (its extreme points).

- New task ``i``: learn a posterior ``Q = N(mu, Sigma)`` (here: the Laplace approximation of a
  Bayesian logistic regression, MAP by damped Newton, prior ``N(mu_prev, prior_var I)`` from the
  previous task's extreme point). Add it as a new extreme point only if its distance to every
  existing extreme point exceeds ``d`` (``||mu - mu_j||``); otherwise the nearest one is reused
  for task ``i``. Old extreme points are never modified (no backward interference).
- Preference ``w``: combine the extreme points associated with the tasks,
  ``Q_w = N(sum_i w_i mu_i, sum_i w_i Sigma_i)``, and return its alpha-level highest-density
  region ``HDR_alpha = {theta : (theta - m_w)^T S_w^{-1} (theta - m_w) <= chi2_D(1 - alpha)}``,
  where ``m_w``/``S_w`` are Q_w's mean and covariance, D the number of parameters and chi2_D the
  chi-square quantile. The model used is the HDR's centre ``m_w``; sampling from the HDR gives more.

Intuition: the posteriors of the tasks span a set of models; a preference picks a point in it, so
no training per preference is needed and the cost is constant in the number of preferences.

Where it departs from standard continual learning: it returns a family of models (one per
preference) instead of one model, and never updates what it learned for earlier tasks.

Choices ([unverified] mechanics):
- The paper combines distributions; the lab combines the Gaussian *parameters* (means and
  covariances), which makes the HDR an ellipsoid with a closed form and makes the trade-off monotone
  for convex per-task losses (the task-i loss is convex on the segment from ``mu_i``).
- Distance between extreme points: Euclidean distance of the means; ``d`` = 0.1,
  ``prior_var`` = 10 by default; the first task's prior mean is 0.
- The damped Newton step is halved until the objective does not increase; ``Sigma`` is the inverse
  Hessian at the MAP.
- HDR samples are drawn by rejection (``n`` from Q_w restricted to the ellipsoid).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.stats import chi2

from lab.checks import check_positive, check_range, check_tensor
from lab.registry import register


def laplace_logistic(x: torch.Tensor, y: torch.Tensor, prior_mean: torch.Tensor, prior_var: float = 10.0,
                     iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Laplace posterior ``(mu (D,), Sigma (D, D))`` of logistic regression with a bias.

    ``theta = (w, b)``; ``p = sigmoid(x w + b)``; the MAP minimizes
    ``-sum log-lik + ||theta - prior_mean||^2 / (2 prior_var)`` (Newton, step halved until the
    objective does not increase); ``Sigma = H^{-1}`` at the MAP.
    """
    check_tensor("x", x, ndim=2, finite=True, dtype_kind="float")
    check_tensor("y", y, shape=(x.shape[0],))
    check_positive("prior_var", prior_var)
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)          # (N, D)
    prior_mean = prior_mean.to(x.dtype)
    yf = y.to(x.dtype)
    eye = torch.eye(xb.shape[1], dtype=x.dtype, device=x.device)

    def objective(th: torch.Tensor) -> torch.Tensor:
        z = xb @ th
        return (F.softplus(z) - yf * z).sum() + ((th - prior_mean) ** 2).sum() / (2 * prior_var)

    theta = prior_mean.clone()
    for _ in range(iters):
        p = torch.sigmoid(xb @ theta)                                          # (N,)
        grad = xb.T @ (p - yf) + (theta - prior_mean) / prior_var               # (D,)
        hess = xb.T @ (xb * (p * (1 - p))[:, None]) + eye / prior_var          # (D, D)
        step, f0 = torch.linalg.solve(hess, grad), objective(theta)
        # damped Newton: halve the step until the objective does not increase
        t = 1.0
        while objective(theta - t * step) > f0 and t > 1e-8:
            t /= 2
        theta = theta - t * step
        if float(step.norm()) < 1e-10:
            break
    p = torch.sigmoid(xb @ theta)
    hess = xb.T @ (xb * (p * (1 - p))[:, None]) + eye / prior_var
    return theta, torch.linalg.inv(hess)


@dataclass
class Gaussian:
    """One extreme point of the credal set: ``N(mean, cov)``."""

    mean: torch.Tensor
    cov: torch.Tensor


@register("continual", "ibcl",
          paper="IBCL: Zero-shot Model Generation for Task Trade-offs in Continual Learning",
          arxiv="2305.14782")
class IBCL:
    """Knowledge base of Gaussian extreme points; :meth:`model_for` gives a model per preference.

    Args:
        d: distance threshold: a new posterior whose mean lies within ``d`` of an existing extreme
            point reuses that point instead of adding one.
        prior_var: variance of the isotropic prior around the previous task's mean.
    """

    def __init__(self, d: float = 0.1, prior_var: float = 10.0):
        self.d = check_positive("d", d, allow_zero=True)
        self.prior_var = check_positive("prior_var", prior_var)
        self.extremes: list[Gaussian] = []
        self.task_to_extreme: list[int] = []

    def add_task(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Learn task data ``(x, y)``; returns the index of the extreme point used for the task."""
        dim = x.shape[1] + 1 if x.dim() == 2 else 0
        prior = (self.extremes[self.task_to_extreme[-1]].mean if self.task_to_extreme
                 else torch.zeros(dim, dtype=x.dtype, device=x.device))
        mean, cov = laplace_logistic(x, y, prior, self.prior_var)
        dists = [float((mean - q.mean).norm()) for q in self.extremes]
        if dists and min(dists) <= self.d:
            j = dists.index(min(dists))
        else:
            self.extremes.append(Gaussian(mean, cov))
            j = len(self.extremes) - 1
        self.task_to_extreme.append(j)
        return j

    def preference_distribution(self, w) -> Gaussian:
        """``Q_w = N(sum_i w_i mu_i, sum_i w_i Sigma_i)`` over the tasks' extreme points."""
        if not self.task_to_extreme:
            raise ValueError("the knowledge base is empty: call add_task first")
        w = torch.as_tensor(w, dtype=self.extremes[0].mean.dtype, device=self.extremes[0].mean.device)
        check_tensor("w", w, shape=(len(self.task_to_extreme),), finite=True)
        if (w < 0).any() or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"w must lie on the simplex (w_i >= 0, sum 1), got {w.tolist()}")
        mean = sum(wi * self.extremes[j].mean for wi, j in zip(w, self.task_to_extreme))
        cov = sum(wi * self.extremes[j].cov for wi, j in zip(w, self.task_to_extreme))
        return Gaussian(mean, cov)

    def model_for(self, w) -> torch.Tensor:
        """The parameter for preference ``w``: the centre of ``Q_w``'s HDR, ``sum_i w_i mu_i``."""
        return self.preference_distribution(w).mean

    def hdr_samples(self, w, alpha: float = 0.05, n: int = 256,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` parameters drawn from ``Q_w`` restricted to its alpha-HDR (rejection sampling)."""
        check_range("alpha", alpha, 0.0, 1.0, lo_open=True, hi_open=True)
        q = self.preference_distribution(w)
        dim = q.mean.shape[0]
        chol = torch.linalg.cholesky(q.cov)
        radius2 = float(chi2.ppf(1 - alpha, dim))
        out = []
        while sum(len(o) for o in out) < n:
            z = torch.randn(2 * n, dim, generator=generator, dtype=q.mean.dtype,
                            device=generator.device if generator is not None else q.mean.device).to(q.mean.device)
            out.append(q.mean + z[(z * z).sum(1) <= radius2] @ chol.T)      # Mahalanobis^2 = |z|^2
        return torch.cat(out)[:n]


def logistic_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean logistic loss of ``theta = (w, b)`` on ``(x, y)``."""
    logits = x @ theta[:-1] + theta[-1]
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y.to(x.dtype)))


__all__ = ["IBCL", "Gaussian", "laplace_logistic", "logistic_loss"]
