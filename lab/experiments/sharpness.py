"""Experiments ``sharp_flat`` and ``sharpness_digits``: where do SGD, SAM and WSAM settle?

``sharp_flat``: a 2-D loss with a sharp, deeper minimum and a flat, shallower one
(:mod:`toy_envs.sharp_flat`),

    f(w) = - h_s exp(-|w - mu_s|^2 / (2 s_s^2)) - h_f exp(-|w - mu_f|^2 / (2 s_f^2)) + c/2 |w|^2

with mu_s = (-1, 0), s_s = 0.2, h_s = 1 (curvature about 25) and mu_f = (1.2, 0), s_f = 1,
h_f = 0.8 (curvature about 0.9), c = 0.1. ``starts`` independent runs start from points drawn
uniformly in [-2.5, 2.5] x [-1.5, 1.5]; each step adds Gaussian noise of std ``noise`` to every
run's gradient (one draw per step, the same in SAM's two passes, like a minibatch). Every
``eigen_every`` steps the History records the mean top Hessian eigenvalue ``top_eigenvalue``
(lambda_max; the 2x2 Hessian is exact, :func:`toy_envs.sharp_flat.sharp_flat_hessian`) and three
fractions of the runs: ``sharp_frac`` (lambda_max at least ``FLAT_THRESHOLD``, the geometric mean
of the two minima's curvatures: in the sharp minimum), ``flat_frac`` (below it: somewhere flatter)
and ``saddle_frac`` (an eigenvalue below -0.05: on a slope or ridge, not at a minimum; SAM can be
caught on the rim around the sharp well, where theta + e falls into it).

The runs are batched: the points form one (K, 2) tensor. A plain optimizer (``sgd``, ``adam``, any
elementwise one) steps all rows at once, which is exactly K separate runs. SAM and WSAM are run
from their functional core (:func:`lab.optim.sam.perturbation`, :func:`lab.optim.wsam.wsam_gradient`)
with one ball per run, ``e_k = rho g_k / ||g_k||``, and their base optimizer
(:func:`lab.optim.sam.build_base_optimizer`) stepping the batch: a test checks the paths against
K separate ``SAM``/``WSAM`` optimizers. (One SAM over the (K, 2) tensor would be wrong: its ball
would span all runs together.) WSAM's ``max_norm`` clipping is global and is not supported here.

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
from lab.claims import Claim
from lab.checks import check_int, check_nonneg, check_positive
from lab.experiments._base import experiment, resolve_device, sweep
from lab.experiments.optimizers import settings
from lab.history import History, Runs
from lab.models import MLP
from lab.optim.sam import build_base_optimizer, perturbation
from lab.optim.sharpness import top_hessian_eigenvalue
from lab.optim.wsam import wsam_gradient
from lab.registry import get, parse_spec
from toy_envs.datasets import digits
from toy_envs.sharp_flat import (BOX, FLAT_THRESHOLD, sharp_flat_grad, sharp_flat_hessian,
                                 sharp_flat_loss)


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
    starts: int = 32  # number of random starting points (independent runs, batched)
    eigen_every: int = 10  # record the Hessian eigenvalues every this many steps
    seed: int = 0  # seed of the starting points and the gradient noise
    device: str = "auto"  # "auto" = CUDA when available, else CPU


class _BatchedSharpness:
    """SAM or WSAM with one ball per row of a (K, 2) tensor of independent runs.

    ``step(grad_fn)``: ``grad_fn(w) -> (K, 2)`` is the (noisy) gradient at ``w``. The same update
    as K separate ``SAM``/``WSAM`` optimizers with the same settings (tested).
    """

    def __init__(self, name: str, w: torch.Tensor, *, lr: float, rho: float = 0.05,
                 gamma: float = 0.9, adaptive: bool = False, decouple: bool = True,
                 eps: float = 1e-12, base_optimizer=torch.optim.SGD,
                 weight_decay: float | None = None, base_kwargs: dict | None = None,
                 max_norm: float | None = None):
        check_nonneg("rho", rho)
        if max_norm is not None:
            raise ValueError("max_norm (global gradient clipping) is not supported by the batched "
                             "sharp_flat toy; leave it None")
        settings = {k: v for k, v in {"lr": lr, "weight_decay": weight_decay,
                                      **(base_kwargs or {})}.items() if v is not None}
        self.w, self.name, self.rho, self.adaptive, self.eps = w, name, rho, adaptive, eps
        self.alpha = gamma / (1.0 - gamma)                       # WSAM's weight (unused by SAM)
        self.decouple = decouple and name == "wsam"
        self.base = build_base_optimizer([w], base_optimizer, settings, name)

    def step(self, grad_fn) -> None:
        w = self.w
        with torch.no_grad():
            g0 = grad_fn(w)                                      # (K, 2) pass 1
            scaled = w.abs() * g0 if self.adaptive else g0
            norm = scaled.norm(dim=-1, keepdim=True)             # (K, 1): one ball per run
            (e,) = perturbation([w], [g0], rho=self.rho, adaptive=self.adaptive, eps=self.eps,
                                norm=norm)
            g1 = grad_fn(w + e)                                  # (K, 2) pass 2, same noise
            if self.name == "sam":
                w.grad = g1
            elif self.decouple:
                w.grad = g0
            else:
                w.grad = wsam_gradient(g0, g1, self.alpha)
        self.base.step()
        if self.decouple:
            with torch.no_grad():
                # theta <- theta - lr * alpha * (g1 - g0)
                w.add_(g1 - g0, alpha=-self.base.param_groups[0]["lr"] * self.alpha)


def _toy_step(spec: str, w: torch.Tensor, cfg: SharpFlatConfig):
    """``step(grad_fn)`` of the optimizer ``spec`` on the batch of runs ``w`` (K, 2)."""
    name, kwargs = parse_spec(spec)
    if name in ("sam", "wsam"):
        options = {"lr": cfg.lr, "rho": cfg.rho, **({"gamma": cfg.gamma} if name == "wsam" else {}),
                   **kwargs}
        if name == "sam" and "gamma" in options:
            raise TypeError("sam takes no gamma (that is WSAM's sharpness weight)")
        return _BatchedSharpness(name, w, **options).step
    opt = make_optimizer(spec, [w], cfg.lr, {})
    if getattr(opt, "requires_closure", False) or getattr(opt, "requires_fitness", False):
        raise ValueError(f"optimizer {spec!r}: the sharp_flat toy runs elementwise gradient "
                         f"optimizers (sgd, adam, ...), sam and wsam")

    def step(grad_fn) -> None:
        with torch.no_grad():
            w.grad = grad_fn(w)
        opt.step()
    return step


def _plot_sharp_flat(result):
    from lab.viz.sharpness import sharp_flat_figure

    return sharp_flat_figure(result)


@experiment("sharp_flat", SharpFlatConfig,
            paper="Sharpness-Aware Minimization Revisited: Weighted Sharpness as a Regularization Term",
            arxiv="2305.15817", plot=_plot_sharp_flat, smoke={"steps": 10, "starts": 4},
            summary="Sharp vs flat minimum on a 2-D toy: where SGD, SAM and WSAM end")
def sharp_flat(cfg: SharpFlatConfig) -> History:
    check_positive("lr", cfg.lr)
    check_nonneg("noise", cfg.noise)
    check_int("steps", cfg.steps, minimum=1)
    check_int("starts", cfg.starts, minimum=1)
    check_int("eigen_every", cfg.eigen_every, minimum=1)
    dev = resolve_device(cfg.device)
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    lo = torch.tensor([BOX[0][0], BOX[1][0]], dtype=torch.float64, device=dev)
    hi = torch.tensor([BOX[0][1], BOX[1][1]], dtype=torch.float64, device=dev)
    starts = lo + (hi - lo) * torch.rand(cfg.starts, 2, generator=g, dtype=torch.float64, device=dev)
    w = starts.clone().requires_grad_(True)                      # (K, 2): one row per run
    step_fn = _toy_step(cfg.optimizer, w, cfg)
    noise = torch.zeros_like(starts)                             # this step's minibatch-like noise

    def grad_fn(point: torch.Tensor) -> torch.Tensor:
        return sharp_flat_grad(point) + noise                    # the same noise in both passes

    points = [starts]
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})   # filled at the end
    for _ in progress.steps(cfg.steps, desc=cfg.optimizer, history=history):
        torch.randn(starts.shape, generator=g, dtype=starts.dtype, device=dev, out=noise)
        noise.mul_(cfg.noise)
        step_fn(grad_fn)
        points.append(w.detach().clone())
    paths = torch.stack(points, dim=1)                           # (K, steps + 1, 2)
    checked = sorted(set(range(0, cfg.steps + 1, cfg.eigen_every)) | {cfg.steps})
    with torch.no_grad():
        losses = sharp_flat_loss(paths).mean(0)                  # (steps + 1,)
        eig = torch.linalg.eigvalsh(sharp_flat_hessian(paths[:, checked]))   # (K, C, 2) ascending
    low, top = eig[..., 0].cpu(), eig[..., 1].cpu()              # (K, C)
    stats = {"top_eigenvalue": top.mean(0), "sharp_frac": (top >= FLAT_THRESHOLD).double().mean(0),
             "flat_frac": (top < FLAT_THRESHOLD).double().mean(0),
             "saddle_frac": (low < -0.05).double().mean(0)}
    stats = {k: v.tolist() for k, v in stats.items()}
    column = {s: c for c, s in enumerate(checked)}
    for step, loss in enumerate(losses.cpu().tolist()):
        row = {"loss": loss}
        if step in column:
            row.update({k: v[column[step]] for k, v in stats.items()})
        history.append(step, **row)
    bad = ~torch.isfinite(paths).all(-1)                         # (K, steps + 1)
    if bool(bad.any()):
        history.meta["diverged"] = int(bad.any(0).float().argmax().item()) - 1
        history.meta["warning"] = (f"{cfg.optimizer}: {int(bad.any(1).sum())} of {cfg.starts} runs "
                                   f"diverged at lr = {cfg.lr:g}; lower lr")
    history.artifacts["paths"] = paths.cpu().tolist()            # (K, steps + 1, 2)
    history.artifacts["final_eigenvalues"] = torch.stack([low[:, -1], top[:, -1]], -1).tolist()
    history.artifacts["threshold"] = FLAT_THRESHOLD
    return history


# ---- digits ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharpnessDigitsConfig:
    """Config of ``sharpness_digits``."""

    optimizer: str = "sam"  # registry spec, e.g. "sgd", "sam", "wsam", "sam(adaptive=True)"
    rho: float = 0.1  # SAM/WSAM radius
    gamma: float = 0.9  # WSAM sharpness weight
    lr: float = 0.1  # learning rate
    steps: int = 60  # minibatch steps
    batch_size: int = 64  # examples per minibatch
    hidden: int = 32  # hidden units (one hidden layer)
    batchnorm: bool = True  # BatchNorm after the hidden layer
    eval_every: int = 20  # evaluate accuracy and sharpness every this many steps
    eigen_iters: int = 10  # power-iteration steps for the top Hessian eigenvalue
    seed: int = 0  # seed of the split, the initialization and the minibatches
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_digits(result):
    from lab.viz.sharpness import sharpness_curves

    return sharpness_curves(result, ["loss", "accuracy", "top_eigenvalue"])


@experiment("sharpness_digits", SharpnessDigitsConfig,
            paper="Sharpness-Aware Minimization for Efficiently Improving Generalization",
            arxiv="2010.01412", plot=_plot_digits, smoke={"steps": 4, "eval_every": 2, "eigen_iters": 2},
            summary="SGD vs SAM vs WSAM on the digits MLP: loss, accuracy, top Hessian eigenvalue")
def sharpness_digits(cfg: SharpnessDigitsConfig) -> History:
    check_positive("lr", cfg.lr)
    check_int("steps", cfg.steps, minimum=1)
    check_int("batch_size", cfg.batch_size, minimum=1)
    check_int("eval_every", cfg.eval_every, minimum=1)
    dev = resolve_device(cfg.device)
    x_train, y_train, x_test, y_test = (t.to(dev) for t in digits(seed=cfg.seed))
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    with torch.device(dev):
        model = MLP(64, (cfg.hidden,), 10, batchnorm=cfg.batchnorm)
    _init_linear_layers(model, g)
    opt = make_optimizer(cfg.optimizer, list(model.parameters()), cfg.lr,
                         {"rho": cfg.rho, "gamma": cfg.gamma})
    probe = x_train[:128], y_train[:128]  # fixed subset for the Hessian
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    losses = []                                              # per step, on the device
    for step in progress.steps(cfg.steps + 1, desc=cfg.optimizer, history=history):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            history.append(step, **_evaluate(model, x_train, y_train, x_test, y_test, probe, cfg, g))
        if step == cfg.steps:
            break
        idx = torch.randint(len(y_train), (cfg.batch_size,), generator=g, device=dev)
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
        losses.append(loss.detach())
    for step, loss in enumerate(torch.stack(losses).cpu().tolist()):
        history.append(step, loss=loss)
    history.rows.sort(key=lambda row: row[0])                # evaluations and losses, step order
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


def compare_toy(cfg: SharpFlatConfig) -> Runs:
    """Notebook 02, panel 1: SGD, SAM and WSAM on the sharp/flat toy with one config."""
    return compare(cfg, ("sgd", "sam", "wsam"))


def compare_digits(cfg: SharpnessDigitsConfig) -> Runs:
    """Notebook 02, panel 2: SGD, SAM and WSAM on the digits MLP with one config."""
    return compare(cfg, ("sgd", "sam", "wsam"))


# ---- the lesson's claims (notebook 02) ----------------------------------------------------------
TOY_CONTROLS = ("rho", "gamma", "lr", "noise", "seed")
DIGITS_CONTROLS = ("rho", "gamma", "lr", "steps", "seed")
"""The fields notebook 02's panels expose; each claim's config names all of them."""

def _leaves_sharp_minimum(runs: Runs) -> bool:
    sgd, sam, wsam = (runs[k]["sharp_frac"][-1] for k in ("sgd", "sam", "wsam"))
    return sgd >= 0.1 and sam <= sgd / 3 and wsam <= sgd / 3


def _flatter(runs: Runs) -> bool:
    sgd, sam, wsam = (runs[k]["top_eigenvalue"][-1] for k in ("sgd", "sam", "wsam"))
    acc = {k: runs[k]["accuracy"][-1] for k in ("sgd", "sam", "wsam")}
    no_gain = acc["sam"] <= acc["sgd"] + 0.01 and acc["wsam"] < acc["sgd"]
    return sam <= 0.95 * sgd and wsam <= 0.7 * sgd and no_gain


CLAIMS = [
    Claim(
        notebook="02_sharpness", panel="toy", name="leave_sharp",
        text="With ρ = 0.5, wider than the sharp well (0.2), SAM and WSAM leave the sharp minimum: "
             "about one SGD run in five ends there, at most a third as many SAM or WSAM runs do "
             "(same 32 starts, same gradient noise).",
        experiment=compare_toy, base=SharpFlatConfig(), seeds=3,
        config=settings(SharpFlatConfig(), TOY_CONTROLS),
        holds=_leaves_sharp_minimum,
        control={"rho": 0.05},
        control_text="ρ = 0.05, narrower than the well: the ball fits inside it, SAM ends where SGD "
                     "ends (WSAM, with its 3x weight on sharpness, still leaves a little more often)",
    ),
    Claim(
        notebook="02_sharpness", panel="digits", name="flatter",
        text="On the digits MLP, from the same initialization and minibatches, SAM (ρ = 0.1) ends "
             "60 steps flatter than SGD (top Hessian eigenvalue of the training loss about 5-20 % "
             "lower) and WSAM (γ = 0.9: nine times the weight on sharpness) much flatter (30-65 % "
             "lower); test accuracy does not improve in so short a run (WSAM's drops).",
        experiment=compare_digits, base=SharpnessDigitsConfig(), seeds=3,
        config=settings(SharpnessDigitsConfig(), DIGITS_CONTROLS),
        holds=_flatter,
        control={"rho": 0.005},
        control_text="ρ = 0.005: the ball is too small to feel the curvature, SAM ends as sharp "
                     "as SGD (within 2 %) and WSAM within about 10 %",
    ),
]


__all__ = ["SharpFlatConfig", "SharpnessDigitsConfig", "sharp_flat", "sharpness_digits", "compare",
           "compare_toy", "compare_digits", "make_optimizer", "TOY_CONTROLS", "DIGITS_CONTROLS",
           "CLAIMS"]
