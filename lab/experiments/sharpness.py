"""Experiments ``sharp_flat`` and ``sharpness_digits``: where do SGD, SAM and WSAM settle?

``sharp_flat``: a 2-D loss with a sharp, deeper minimum and a flat, shallower one,

    f(w) = - h_s exp(-|w - mu_s|^2 / (2 s_s^2)) - h_f exp(-|w - mu_f|^2 / (2 s_f^2)) + c/2 |w|^2

with mu_s = (-1, 0), s_s = 0.2, h_s = 1 (curvature about 25) and mu_f = (1.2, 0), s_f = 1,
h_f = 0.8 (curvature about 0.9), c = 0.1. Each run starts from ``starts`` points drawn uniformly
in [-2.5, 2.5] x [-1.5, 1.5] and runs one optimizer per start. Every ``eigen_every`` steps the
top Hessian eigenvalue at each point is measured by power iteration
(``lab.optim.sharpness.hessian_eigen_range``). Per checkpoint the History holds the mean
``top_eigenvalue`` (lambda_max) and three fractions of the starts: ``sharp_frac`` (lambda_max at
least ``FLAT_THRESHOLD``, the geometric mean of the two minima's curvatures: in the sharp
minimum), ``flat_frac`` (lambda_max below it: somewhere flatter) and ``saddle_frac`` (a negative
eigenvalue below -0.05: on a slope or ridge, not at a minimum; SAM can be caught on the rim around
the sharp well, where theta + e falls into it). The closure writes the analytic gradient plus
Gaussian noise (one draw per step, the same in SAM's two passes, like a minibatch) into
``w.grad`` (cheaper than autograd for a 2-vector, same contract).

``sharpness_digits``: the MLP (with BatchNorm, so SAM's pass-2 statistics matter) on
scikit-learn's digits, minibatch training; loss, train and test accuracy, and the top Hessian
eigenvalue of the training loss (eval mode, a fixed subset of 128 examples, power iteration to
1% relative change) over training.

Both take the optimizer as a registry spec; ``rho`` and ``gamma`` go to optimizers that accept
them (SAM, WSAM), a spec's own values win. :func:`compare` runs several optimizers on one config.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lab import progress
from lab.checks import check_int, check_positive
from lab.experiments._base import experiment, sweep
from lab.history import History, Runs
from lab.models import MLP
from lab.optim.sharpness import hessian_eigen_range, top_hessian_eigenvalue
from lab.registry import get, parse_spec
from toy_envs.datasets import digits
from toy_envs.sharp_flat import BOX, FLAT_THRESHOLD, sharp_flat_grad, sharp_flat_loss


def make_optimizer(spec: str, params, lr: float, options: dict[str, object]):
    """Registry spec -> optimizer with ``lr``; each entry of ``options`` (rho, gamma, sigma,
    rank, ...) is passed only to classes that take it, and a spec's own values win."""
    name, spec_kwargs = parse_spec(spec)
    cls = get("optimizer", name)
    accepted = inspect.signature(cls).parameters
    extra = {k: v for k, v in options.items() if k in accepted}
    return cls(params, **{"lr": lr, **extra, **spec_kwargs})


def _step(opt, closure) -> None:
    opt.step(closure) if getattr(opt, "requires_closure", False) else (closure(), opt.step())


@dataclass(frozen=True)
class SharpFlatConfig:
    """Config of ``sharp_flat``."""

    optimizer: str = "sam"  # registry spec, e.g. "sgd", "sam", "wsam(decouple=False)"
    rho: float = 0.5  # SAM/WSAM radius (wider than the sharp well, s_s = 0.2)
    gamma: float = 0.75  # WSAM sharpness weight, alpha = gamma / (1 - gamma)
    lr: float = 0.05  # learning rate (stable in both wells: lr * 25 < 2)
    steps: int = 150  # optimizer steps per start
    noise: float = 0.3  # std of Gaussian gradient noise, one draw per step (shared by both passes)
    starts: int = 8  # number of random starting points
    eigen_every: int = 50  # measure the top Hessian eigenvalue every this many steps
    seed: int = 0  # seed of the starting points


def _plot_sharp_flat(result):
    from lab.viz.sharpness import sharp_flat_figure

    return sharp_flat_figure(result)


@experiment("sharp_flat", SharpFlatConfig,
            paper="Sharpness-Aware Minimization Revisited: Weighted Sharpness as a Regularization Term",
            arxiv="2305.15817", plot=_plot_sharp_flat,
            summary="Sharp vs flat minimum on a 2-D toy: where SGD, SAM and WSAM end")
def sharp_flat(cfg: SharpFlatConfig) -> History:
    check_positive("lr", cfg.lr)
    check_int("steps", cfg.steps, minimum=1)
    check_int("starts", cfg.starts, minimum=1)
    check_int("eigen_every", cfg.eigen_every, minimum=1)
    g = torch.Generator().manual_seed(cfg.seed)
    lo = torch.tensor([BOX[0][0], BOX[1][0]], dtype=torch.float64)
    hi = torch.tensor([BOX[0][1], BOX[1][1]], dtype=torch.float64)
    starts = lo + (hi - lo) * torch.rand(cfg.starts, 2, generator=g, dtype=torch.float64)
    points = [s.clone().requires_grad_(True) for s in starts]
    opts = [make_optimizer(cfg.optimizer, [w], cfg.lr, {"rho": cfg.rho, "gamma": cfg.gamma}) for w in points]
    noises = torch.zeros(cfg.starts, 2, dtype=torch.float64)  # this step's minibatch-like noise
    closures = [_closure(w, noises[k]) for k, w in enumerate(points)]
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    paths = [[w.detach().tolist()] for w in points]
    for step in progress.steps(cfg.steps + 1, desc=cfg.optimizer, history=history):
        with torch.no_grad():
            loss = sharp_flat_loss(torch.stack([w.detach() for w in points]))  # (K,)
        row = {"loss": loss.mean().item()}
        if step % cfg.eigen_every == 0 or step == cfg.steps:
            eig = torch.tensor([_eigen_range(w) for w in points])  # (K, 2): lambda_min, lambda_max
            row.update(top_eigenvalue=eig[:, 1].mean().item(),
                       sharp_frac=(eig[:, 1] >= FLAT_THRESHOLD).double().mean().item(),
                       flat_frac=(eig[:, 1] < FLAT_THRESHOLD).double().mean().item(),
                       saddle_frac=(eig[:, 0] < -0.05).double().mean().item())
        history.append(step, **row)
        if step == cfg.steps:
            break
        noises.copy_(cfg.noise * torch.randn(cfg.starts, 2, generator=g, dtype=torch.float64))
        for w, opt, closure, path in zip(points, opts, closures, paths):
            _step(opt, closure)
            path.append(w.detach().tolist())
        if not math.isfinite(row["loss"]):
            history.meta["diverged"] = step
            break
    history.artifacts["paths"] = paths  # (K, steps + 1, 2)
    history.artifacts["final_eigenvalues"] = eig.tolist()  # (K, 2): lambda_min, lambda_max
    history.artifacts["threshold"] = FLAT_THRESHOLD
    return history


def _closure(w: torch.Tensor, noise: torch.Tensor):
    def closure() -> torch.Tensor:
        with torch.no_grad():
            w.grad = sharp_flat_grad(w.detach()) + noise  # the same noise in SAM's two passes
            return sharp_flat_loss(w.detach())
    return closure


def _eigen_range(w: torch.Tensor) -> tuple[float, float]:
    x = w.detach().clone().requires_grad_(True)
    return hessian_eigen_range(lambda: sharp_flat_loss(x), [x], iters=15, tol=1e-4)


# ---- digits ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharpnessDigitsConfig:
    """Config of ``sharpness_digits``."""

    optimizer: str = "sam"  # registry spec, e.g. "sgd", "sam", "wsam", "sam(adaptive=True)"
    rho: float = 0.05  # SAM/WSAM radius
    gamma: float = 0.9  # WSAM sharpness weight
    lr: float = 0.1  # learning rate
    steps: int = 150  # minibatch steps
    batch_size: int = 64  # examples per minibatch
    hidden: int = 32  # hidden units (one hidden layer)
    batchnorm: bool = True  # BatchNorm after the hidden layer
    eval_every: int = 25  # evaluate accuracy and sharpness every this many steps
    eigen_iters: int = 10  # power-iteration steps for the top Hessian eigenvalue
    seed: int = 0  # seed of the split, the initialization and the minibatches


def _plot_digits(result):
    from lab.viz.sharpness import sharpness_curves

    return sharpness_curves(result, ["loss", "accuracy", "top_eigenvalue"])


@experiment("sharpness_digits", SharpnessDigitsConfig,
            paper="Sharpness-Aware Minimization for Efficiently Improving Generalization",
            arxiv="2010.01412", plot=_plot_digits,
            summary="SGD vs SAM vs WSAM on the digits MLP: loss, accuracy, top Hessian eigenvalue")
def sharpness_digits(cfg: SharpnessDigitsConfig) -> History:
    check_positive("lr", cfg.lr)
    check_int("steps", cfg.steps, minimum=1)
    check_int("batch_size", cfg.batch_size, minimum=1)
    check_int("eval_every", cfg.eval_every, minimum=1)
    x_train, y_train, x_test, y_test = digits(seed=cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = MLP(64, (cfg.hidden,), 10, batchnorm=cfg.batchnorm)
    _init_linear_layers(model, g)
    opt = make_optimizer(cfg.optimizer, list(model.parameters()), cfg.lr,
                         {"rho": cfg.rho, "gamma": cfg.gamma})
    probe = x_train[:128], y_train[:128]  # fixed subset for the Hessian
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    for step in progress.steps(cfg.steps + 1, desc=cfg.optimizer, history=history):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            history.append(step, **_evaluate(model, x_train, y_train, x_test, y_test, probe, cfg, g))
        if step == cfg.steps:
            break
        idx = torch.randint(len(y_train), (cfg.batch_size,), generator=g)
        xb, yb = x_train[idx], y_train[idx]

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            return loss

        model.train()
        if getattr(opt, "requires_closure", False):
            loss = opt.step(closure)
        else:
            loss = closure()
            opt.step()
        history.append(step, loss=loss.item())
    return history


def _init_linear_layers(model: torch.nn.Module, g: torch.Generator) -> None:
    """torch's default nn.Linear init, drawn from ``g`` (no global seeding)."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=g)
                bound = 1.0 / math.sqrt(layer.in_features)
                torch.nn.init.uniform_(layer.bias, -bound, bound, generator=g)


def _evaluate(model, x_train, y_train, x_test, y_test, probe, cfg, g) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        train_acc = (model(x_train).argmax(-1) == y_train).float().mean().item()
        test_acc = (model(x_test).argmax(-1) == y_test).float().mean().item()
    params = list(model.parameters())
    eig = top_hessian_eigenvalue(lambda: F.cross_entropy(model(probe[0]), probe[1]), params,
                                 iters=cfg.eigen_iters, tol=1e-2, generator=g)
    model.train()
    return {"accuracy": test_acc, "train_accuracy": train_acc, "top_eigenvalue": eig}


def compare(cfg, optimizers: tuple[str, ...] = ("sgd", "sam", "wsam"),
            experiment_name: str | None = None) -> Runs:
    """Run the experiment of ``cfg`` (``sharp_flat`` or ``sharpness_digits``) once per optimizer."""
    name = experiment_name or {SharpFlatConfig: "sharp_flat",
                               SharpnessDigitsConfig: "sharpness_digits"}[type(cfg)]
    return sweep(name, "optimizer", optimizers, cfg)


__all__ = ["SharpFlatConfig", "SharpnessDigitsConfig", "sharp_flat", "sharpness_digits", "compare",
           "make_optimizer"]
