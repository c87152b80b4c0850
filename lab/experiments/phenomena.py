"""Generalisation phenomena, each a small CPU demo.

- ``double_descent`` ("Understanding the Role of Optimization in Double Descent", arXiv 2312.03951):
  random-features regression ``phi(x) = ReLU(W x) / sqrt(p)`` on a linear teacher. The min-norm
  least-squares fit has a sharp test-error peak at the interpolation threshold ``p = n``; gradient
  descent with a fixed budget fails to fit the ill-conditioned features near ``p = n``, and the
  peak shrinks or vanishes -- the peak is an optimisation phenomenon. More GD steps bring it back.
- ``opposing_signals`` ("Outliers with Opposing Signals Have an Outsized Effect on Neural Network
  Optimization", arXiv 2311.04163): two small outlier groups share one large feature with opposite
  labels; full-batch GD with a large step sharpens to ``lambda_max ~ 2 / lr`` and the two groups'
  losses oscillate in anti-phase.
- ``large_batch_gap`` ("Train longer, generalize better", arXiv 1705.08741): a BN-MLP on digits with
  a small and a large batch; ghost batch normalization, the sqrt learning-rate rule and regime
  adaptation (as many updates as the small batch) close the gap. Logs ``||w_t - w_0||``, which grows
  like ``log t`` early on.
- ``highdim_dynamics`` ("High-dimensional dynamics of generalization error in neural networks",
  arXiv 1710.03667): a linear student learns a noisy linear teacher by gradient descent from a small
  init with ``n = alpha d`` examples. Each eigen-direction of the input covariance with eigenvalue
  ``lambda`` is learned at rate ``lr lambda``; near ``alpha = 1`` the smallest eigenvalues go to zero,
  so late in training the noise is fitted along them: the test error falls, then rises
  (overtraining), and the final error peaks at ``alpha = 1``. Early stopping removes the rise.
The time-to-result benchmark ``algoperf`` ("Benchmarking Neural Network Training Algorithms",
arXiv 2306.07179) lives with the optimizer experiments (``lab.experiments.optimizers``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lab import progress
from lab.checks import check_int, check_nonneg, check_positive
from lab.experiments._base import experiment, run
from lab.experiments.optimizers import seeded_init_
from lab.history import History, Runs
from lab.models import MLP
from lab.models.ghost_bn import ghost_batchnorm, regime_adaptation
from lab.optim.sharpness import top_hessian_eigenvalue
from toy_envs.datasets import digits
from toy_envs.tasks import linear_teacher, opposing_signals as opposing_data


def _plot(builder_name: str):
    def plot(history: History):
        from lab.viz import phenomena

        return getattr(phenomena, builder_name)(history)

    return plot


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DoubleDescentConfig:
    """Config of ``double_descent``."""

    widths: tuple[int, ...] = (10, 20, 40, 60, 80, 90, 100, 110, 125, 150, 200, 300, 500, 1000)  # p
    n_train: int = 100  # training points n (the threshold is p = n)
    n_test: int = 2000  # test points
    d: int = 20  # input dimension
    noise: float = 0.5  # label noise std of the teacher
    ridge: float = 0.0  # lambda of the ridge fit (0 = min-norm least squares)
    gd_steps: int = 200  # budget of gradient descent from zero, lr = 1 / lambda_max
    seed: int = 0  # teacher, data and random features


@experiment("double_descent", DoubleDescentConfig,
            paper="Understanding the Role of Optimization in Double Descent", arxiv="2312.03951",
            plot=_plot("double_descent_figure"),
            summary="Min-norm random features peak at p = n; budgeted GD does not reach the peak")
def double_descent(cfg: DoubleDescentConfig) -> History:
    check_nonneg("ridge", cfg.ridge)
    check_int("gd_steps", cfg.gd_steps, minimum=0)
    check_int("n_train", cfg.n_train, minimum=1)
    if not cfg.widths or any(p < 1 for p in cfg.widths):
        raise ValueError(f"widths must be a non-empty tuple of ints >= 1, got {cfg.widths}")
    x, y, beta = linear_teacher(cfg.n_train, cfg.d, noise=cfg.noise, seed=cfg.seed)
    x_te, y_te, _ = linear_teacher(cfg.n_test, cfg.d, noise=cfg.noise, seed=cfg.seed + 1, beta=beta)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    w_all = torch.randn(max(cfg.widths), cfg.d, generator=g, dtype=torch.float64)   # nested features
    history = History(meta={"algorithm": "random_features", "seed": cfg.seed})
    for i, p in enumerate(progress.track(cfg.widths, desc="widths")):
        phi = torch.relu(x @ w_all[:p].T) / math.sqrt(p)                      # (n, p)
        phi_te = torch.relu(x_te @ w_all[:p].T) / math.sqrt(p)                # (n_test, p)
        n = len(y)
        if cfg.ridge > 0:
            # a = (Phi^T Phi / n + lambda I)^{-1} Phi^T y / n
            a_fit = torch.linalg.solve(phi.T @ phi / n + cfg.ridge * torch.eye(p, dtype=phi.dtype),
                                       phi.T @ y / n)
        else:
            a_fit = torch.linalg.pinv(phi) @ y                                 # min-norm solution
        # gradient descent from 0 on L(a) = ||Phi a - y||^2 / (2n), lr = 1 / lambda_max(Phi^T Phi / n)
        svals = torch.linalg.svdvals(phi)
        lr = n / float(svals[0] ** 2)
        a_gd = torch.zeros(p, dtype=torch.float64)
        for _ in range(cfg.gd_steps):
            a_gd -= lr * (phi.T @ (phi @ a_gd - y) / n + cfg.ridge * a_gd)
        smallest = float(svals[min(n, p) - 1])
        history.append(i, p=p,
                       test_mse=float(((phi_te @ a_fit - y_te) ** 2).mean()),
                       train_mse=float(((phi @ a_fit - y) ** 2).mean()),
                       test_mse_gd=float(((phi_te @ a_gd - y_te) ** 2).mean()),
                       train_mse_gd=float(((phi @ a_gd - y) ** 2).mean()),
                       condition=float(svals[0]) / max(smallest, 1e-300))
    return history


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpposingConfig:
    """Config of ``opposing_signals``."""

    optimizer: Literal["gd", "adam"] = "gd"  # full-batch gradient descent or Adam
    lr: float = 0.5  # step size (GD's stability threshold is lambda_max = 2 / lr)
    steps: int = 200  # full-batch steps
    with_outliers: bool = True  # include groups A and B (share x_big = 10, opposite labels)
    n: int = 400  # training points
    big: float = 10.0  # value of the large feature of the outliers
    hidden: int = 32  # width of the two hidden layers (3-layer MLP)
    sharpness_every: int = 10  # steps between top-Hessian-eigenvalue estimates
    seed: int = 0  # data and initialization


@experiment("opposing_signals", OpposingConfig,
            paper="Outliers with Opposing Signals Have an Outsized Effect on Neural Network "
                  "Optimization", arxiv="2311.04163", plot=_plot("opposing_signals_figure"),
            summary="Per-group losses of opposing outliers and the sharpness against 2/lr")
def opposing_signals(cfg: OpposingConfig) -> History:
    check_positive("lr", cfg.lr)
    check_int("steps", cfg.steps, minimum=1)
    check_int("sharpness_every", cfg.sharpness_every, minimum=1)
    x, y, group = opposing_data(cfg.n, big=cfg.big, seed=cfg.seed, with_outliers=cfg.with_outliers)
    g = torch.Generator().manual_seed(cfg.seed)
    model = MLP(x.shape[1], (cfg.hidden, cfg.hidden), 2, activation="tanh")
    seeded_init_(model, g)
    params = list(model.parameters())
    opt = (torch.optim.SGD(params, lr=cfg.lr) if cfg.optimizer == "gd"
           else torch.optim.Adam(params, lr=cfg.lr))
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    for step in progress.steps(cfg.steps, desc=cfg.optimizer, history=history):
        opt.zero_grad()
        per_point = F.cross_entropy(model(x), y, reduction="none")              # (n,)
        loss = per_point.mean()
        row = {"loss": loss.item(), "loss_normal": per_point[group == 0].mean().item()}
        if cfg.with_outliers:
            row.update(loss_a=per_point[group == 1].mean().item(),
                       loss_b=per_point[group == 2].mean().item())
        if step % cfg.sharpness_every == 0:
            row["sharpness"] = top_hessian_eigenvalue(
                lambda: F.cross_entropy(model(x), y), params, iters=20, generator=g)
        loss.backward()
        opt.step()
        history.append(step, **row)
        if not math.isfinite(row["loss"]):
            history.meta["diverged"] = step
            break
    history.artifacts["two_over_lr"] = 2.0 / cfg.lr
    return history


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LargeBatchConfig:
    """Config of ``large_batch_gap``."""

    batch_size: int = 512  # B_L (set it to base_batch_size for the small-batch reference)
    base_batch_size: int = 32  # B_S, the batch the recipe (lr, epochs) was tuned for
    lr: float = 0.05  # SGD learning rate at B_S
    epochs: int = 8  # epochs at B_S (regime adaptation multiplies them by ceil(B_L / B_S))
    ghost_batch_size: int = 0  # B_g of ghost batch normalization (0 = plain BatchNorm)
    scale_lr: bool = False  # lr * sqrt(B_L / B_S)
    adapt_regime: bool = False  # epochs * ceil(B_L / B_S): as many updates as at B_S
    hidden: tuple[int, ...] = (64,)  # hidden layers of the BN-MLP
    seed: int = 0  # split, initialization and batch order


@experiment("large_batch_gap", LargeBatchConfig,
            paper="Train longer, generalize better: closing the generalization gap in large batch "
                  "training of neural networks", arxiv="1705.08741", plot=_plot("large_batch_figure"),
            summary="Large-batch test error, with ghost BN, sqrt lr scaling and regime adaptation")
def large_batch_gap(cfg: LargeBatchConfig) -> History:
    check_int("batch_size", cfg.batch_size, minimum=2)
    check_int("ghost_batch_size", cfg.ghost_batch_size, minimum=0)
    lr, epochs, _ = regime_adaptation(cfg.lr, cfg.batch_size, cfg.base_batch_size, cfg.epochs,
                                      scale_lr=cfg.scale_lr, adapt_regime=cfg.adapt_regime)
    g = torch.Generator().manual_seed(cfg.seed)
    x, y, x_te, y_te = digits(seed=cfg.seed)
    model = MLP(64, cfg.hidden, 10, batchnorm=True)
    if cfg.ghost_batch_size:
        ghost_batchnorm(model, cfg.ghost_batch_size)
    seeded_init_(model, g)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.fill_(1.0)
                m.bias.zero_()
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    history = History(meta={"algorithm": f"B={cfg.batch_size}", "seed": cfg.seed})
    step = 0
    for epoch in progress.steps(epochs, desc=f"B={cfg.batch_size}", history=history):
        order = torch.randperm(len(y), generator=g)
        for batch in order.split(cfg.batch_size):
            if len(batch) < 2:
                continue
            model.train()
            opt.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            dist = (torch.nn.utils.parameters_to_vector(model.parameters()) - w0).norm().item()
            history.append(step, loss=loss.item(), distance=dist)
            step += 1
        model.eval()
        with torch.no_grad():
            err = 1.0 - (model(x_te).argmax(1) == y_te).float().mean().item()
        history.append(step - 1, test_error=err, epoch=epoch + 1)
    history.artifacts.update(lr=lr, epochs=epochs, updates=step, final_test_error=err)
    return history


def compare_large_batch(cfg: LargeBatchConfig) -> Runs:
    """Panel callable: the small-batch reference (B_S, same epochs) beside ``cfg``'s large-batch run."""
    reference = dataclasses.replace(cfg, batch_size=cfg.base_batch_size, ghost_batch_size=0,
                                    scale_lr=False, adapt_regime=False)
    fixes = [name for name, on in (("GBN", cfg.ghost_batch_size), ("sqrt lr", cfg.scale_lr),
                                   ("regime", cfg.adapt_regime)) if on]
    label = f"B={cfg.batch_size}" + (" + " + " + ".join(fixes) if fixes else "")
    return Runs({f"B={cfg.base_batch_size}": run("large_batch_gap", reference),
                 label: run("large_batch_gap", cfg)})


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HighDimConfig:
    """Config of ``highdim_dynamics``."""

    alpha: float = 1.0  # n / d, examples per parameter
    d: int = 100  # input dimension = parameters of the linear student
    noise: float = 0.5  # teacher noise std sigma (SNR = 1 / sigma^2, ||beta|| = 1)
    lr: float = 0.2  # gradient-descent step size (stable below 2 / lambda_max(X^T X / n))
    steps: int = 2000  # full-batch GD steps
    init_scale: float = 0.0  # std of the student's initial weights (0 = zero init)
    log_every: int = 10  # steps between logged rows
    seed: int = 0  # teacher, data and init


@experiment("highdim_dynamics", HighDimConfig,
            paper="High-dimensional dynamics of generalization error in neural networks",
            arxiv="1710.03667", plot=_plot("highdim_figure"),
            summary="Train and test error of a linear student over time; overtraining peaks at n = d")
def highdim_dynamics(cfg: HighDimConfig) -> History:
    check_positive("alpha", cfg.alpha)
    check_positive("lr", cfg.lr)
    check_nonneg("init_scale", cfg.init_scale)
    check_int("steps", cfg.steps, minimum=1)
    check_int("log_every", cfg.log_every, minimum=1)
    n = max(1, int(round(cfg.alpha * cfg.d)))
    x, y, beta = linear_teacher(n, cfg.d, noise=cfg.noise, seed=cfg.seed)   # x ~ N(0, I), ||beta|| = 1
    g = torch.Generator().manual_seed(cfg.seed + 1)
    w = cfg.init_scale * torch.randn(cfg.d, generator=g, dtype=torch.float64)
    history = History(meta={"algorithm": "gd", "seed": cfg.seed})
    for step in progress.steps(cfg.steps + 1, desc="gd", history=history):
        if step % cfg.log_every == 0 or step == cfg.steps:
            # test error on fresh x ~ N(0, I): E (x.w - x.beta - noise)^2 = ||w - beta||^2 + sigma^2
            history.append(step, train_error=float(((x @ w - y) ** 2).mean()),
                           test_error=float(((w - beta) ** 2).sum()) + cfg.noise ** 2)
        # w <- w - lr * X^T (X w - y) / n   (full-batch GD on ||Xw - y||^2 / (2n))
        w = w - cfg.lr * x.T @ (x @ w - y) / n
    test = history["test_error"]
    history.artifacts.update(n=n, final_test_error=float(test[-1]), best_test_error=float(test.min()),
                             best_step=int(history.series("test_error")[0][test.argmin()]))
    return history
