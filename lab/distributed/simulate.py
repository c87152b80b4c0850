"""Simulate K data-parallel workers in one process: a least-squares problem, vectorized inner steps.

Problem (``make_problem``): worker k holds (X_k, y_k) with y_k = X_k (w* + h_k) + noise, where the
shift h_k ~ N(0, heterogeneity^2 I) makes the workers' optima disagree (heterogeneity 0 = IID).
Loss of worker k: F_k(theta) = (1/2n) ||X_k theta - y_k||^2; global loss F = (1/K) sum_k F_k.

``train`` runs communication rounds. In a round every worker starts from the anchor and takes
inner steps on minibatches of its own data, all K at once: the batched gradient
X_b^T (X_b theta_k - y_b) / b of every worker in one ``torch.bmm`` (equal to
``torch.func.vmap(torch.func.grad(F_k))``, which the tests check, at a fraction of the overhead). Inner optimizers are
functional SGD or AdamW on (K, p) tensors; their state persists across rounds. Step-based
algorithms take H steps per round and the round lasts H * max_k t_k seconds (everyone waits for
the slowest); A-EDiT takes s_k = floor(sync_time / t_k) steps and the round lasts sync_time.
``batch_size >= samples`` uses the full local data every step.
``outlier_prob``: probability that a worker's round uses labels scaled by 20 (a bad shard), the
loss spike EDiT's penalty is meant to absorb.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lab import progress
from lab.checks import check_choice, check_int, check_nonneg, check_positive
from lab.distributed.a_edit import AEDiT
from lab.distributed.local_sgd import LocalSGD
from lab.history import History


@dataclass
class Problem:
    """K workers' least-squares data: X (K, n, d), y (K, n), the global optimum w_opt (d,)."""

    X: torch.Tensor
    y: torch.Tensor
    w_opt: torch.Tensor

    def loss(self, theta: torch.Tensor) -> float:
        """Global loss F(theta) = (1/K) sum_k (1/2n) ||X_k theta - y_k||^2 at ``theta`` (d,)."""
        residual = self.X @ theta - self.y  # (K, n)
        return float(0.5 * residual.pow(2).mean())


def make_problem(workers: int = 4, dim: int = 10, samples: int = 64, heterogeneity: float = 0.0,
                 noise: float = 0.1, generator: torch.Generator | None = None) -> Problem:
    """A least-squares problem split over ``workers``; ``heterogeneity`` = std of the optimum shifts."""
    check_int("workers", workers, minimum=1)
    check_int("dim", dim, minimum=1)
    check_int("samples", samples, minimum=1)
    check_nonneg("heterogeneity", heterogeneity)
    check_nonneg("noise", noise)
    g = generator or torch.Generator(device="cpu").manual_seed(0)
    dev = g.device
    X = torch.randn(workers, samples, dim, generator=g, device=dev)  # (K, n, d)
    w_star = torch.randn(dim, generator=g, device=dev)  # (d,)
    shifts = heterogeneity * torch.randn(workers, dim, generator=g, device=dev)  # (K, d)
    y = torch.einsum("knd,kd->kn", X, w_star + shifts) + noise * torch.randn(workers, samples, generator=g, device=dev)
    A, b = X.reshape(-1, dim), y.reshape(-1)
    w_opt = torch.linalg.solve(A.T @ A, A.T @ b)  # (d,) normal equations of the pooled problem
    return Problem(X, y, w_opt)


def batch_loss(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1/2b) ||X theta - y||^2 of one worker: ``theta`` (p,), ``X`` (b, p), ``y`` (b,)."""
    return 0.5 * (X @ theta - y).pow(2).mean()


def batch_grads(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`batch_loss` for every worker: (K, p), (K, b, p), (K, b) -> (K, p)."""
    residual = torch.bmm(X, theta.unsqueeze(2)).squeeze(2) - y  # (K, b)
    return torch.bmm(X.transpose(1, 2), residual.unsqueeze(2)).squeeze(2) / X.shape[1]  # (K, p)


def inner_step(theta, grads, state: dict, *, optimizer: str, lr: float, active: torch.Tensor,
               betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> torch.Tensor:
    """One SGD or AdamW (torch.optim.AdamW form) step of every active worker; ``theta`` (K, p)."""
    mask = active.to(theta.dtype).unsqueeze(1)  # (K, 1)
    if optimizer == "sgd":
        return theta - lr * mask * grads
    b1, b2 = betas
    state.setdefault("step", torch.zeros(theta.shape[0], dtype=theta.dtype, device=theta.device))
    state.setdefault("exp_avg", torch.zeros_like(theta))
    state.setdefault("exp_avg_sq", torch.zeros_like(theta))
    state["step"] += active.to(theta.dtype)
    t = state["step"].clamp(min=1).unsqueeze(1)  # (K, 1)
    state["exp_avg"] = torch.where(mask > 0, b1 * state["exp_avg"] + (1 - b1) * grads, state["exp_avg"])
    state["exp_avg_sq"] = torch.where(mask > 0, b2 * state["exp_avg_sq"] + (1 - b2) * grads * grads,
                                      state["exp_avg_sq"])
    # theta <- theta (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)
    denom = (state["exp_avg_sq"] / (1 - b2 ** t)).sqrt() + eps
    update = lr * (state["exp_avg"] / (1 - b1 ** t)) / denom + lr * weight_decay * theta
    return theta - mask * update


def train(problem: Problem, algorithm: LocalSGD, *, rounds: int = 30, sync_interval: int = 8,
          inner: str = "adamw", inner_lr: float = 0.02, batch_size: int = 16,
          step_times: torch.Tensor | None = None, outlier_prob: float = 0.0,
          generator: torch.Generator | None = None) -> History:
    """Run ``rounds`` communication rounds of ``algorithm`` on ``problem``; returns a History with
    ``loss`` (global loss of the anchor), ``wall_clock``, ``inner_steps``, ``pseudo_grad_norm``,
    ``flagged`` (EDiT) and ``dist_to_opt`` per round (round 0 = the start)."""
    check_int("rounds", rounds, minimum=1)
    check_int("sync_interval", sync_interval, minimum=1)
    check_choice("inner", inner, ("sgd", "adamw"))
    check_positive("inner_lr", inner_lr)
    check_int("batch_size", batch_size, minimum=1)
    g = generator or torch.Generator(device="cpu").manual_seed(0)  # draws on the CPU: the same run on every device
    K, n, d = problem.X.shape
    dev = problem.X.device
    times = torch.ones(K, device="cpu") if step_times is None else step_times.to(dtype=torch.float64, device="cpu")
    if times.shape != (K,) or not (times > 0).all():
        raise ValueError(f"step_times must be {K} positive numbers")
    is_async = isinstance(algorithm, AEDiT)
    steps = algorithm.steps_per_round(times) if is_async else torch.full((K,), sync_interval, device="cpu")
    round_time = algorithm.sync_time if is_async else float(sync_interval * times.max())
    anchor = torch.zeros(d, dtype=problem.X.dtype, device=dev)
    state: dict = {}
    history = History(meta={"algorithm": type(algorithm).__name__, "workers": K})
    history.append(0, loss=problem.loss(anchor), wall_clock=0.0, inner_steps=0.0,
                   dist_to_opt=float((anchor - problem.w_opt).norm()))
    clock, total = 0.0, 0
    for r in progress.steps(rounds, desc=type(algorithm).__name__, history=history):
        r += 1
        theta = anchor.expand(K, d).clone()  # (K, p)
        scale = torch.where(torch.rand(K, generator=g, device=g.device) < outlier_prob, 20.0, 1.0).to(dev)  # (K,)
        for s in range(int(steps.max())):
            if batch_size >= n:  # full batch
                Xb, yb = problem.X, problem.y * scale.unsqueeze(1)
            else:
                idx = torch.randint(0, n, (K, batch_size), generator=g, device=g.device).to(dev)  # (K, b)
                Xb = torch.gather(problem.X, 1, idx.unsqueeze(2).expand(-1, -1, d))  # (K, b, d)
                yb = torch.gather(problem.y, 1, idx) * scale.unsqueeze(1)  # (K, b)
            theta = inner_step(theta, batch_grads(theta, Xb, yb), state, optimizer=inner,
                               lr=inner_lr, active=(steps > s).to(dev))
        anchor = algorithm.sync(anchor, theta, steps)
        clock += round_time
        total += int(steps.sum())
        history.append(r, loss=problem.loss(anchor), wall_clock=clock, inner_steps=float(total),
                       dist_to_opt=float((anchor - problem.w_opt).norm()), **algorithm.last_stats)
    history.artifacts["anchor"] = anchor.cpu().tolist()
    history.artifacts["steps_per_round"] = steps.tolist()
    return history
