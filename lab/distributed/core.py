"""The shared outer step of Local SGD, DiLoCo, EDiT and A-EDiT, on flat parameter vectors.

K workers start a round from the same anchor theta (p,), train locally, and end at theta_k.
Sign convention (as in the federated spec sheets, with the opposite sign): the pseudo-gradient is

    Delta_k = theta_anchor - theta_k                                   (K, p)

so that ``theta_anchor - Delta_k`` is worker k's model. A reducer turns the K pseudo-gradients into
one Delta (p,); the outer optimizer is SGD with (Nesterov) momentum that treats Delta as a
gradient, with torch.optim.SGD semantics:

    b <- Delta                         at the first outer step
    b <- mu * b + Delta                afterwards
    theta_anchor <- theta_anchor - eta_out * (Delta + mu * b)     (nesterov)
    theta_anchor <- theta_anchor - eta_out * b                    (heavy ball)

With eta_out = 1 and mu = 0 this is plain model averaging (Local SGD).

The pieces of EDiT's pseudo-gradient penalty live here too, once:
  * :class:`EWMADetector` flags a worker whose pseudo-gradient norm n_k jumps above its running
    mean (z-score above ``threshold * max(1, std of recent z-scores)``);
  * :func:`norm_weights`: w_k = softmax_k(-n_k / T) (small pseudo-gradients get more weight);
  * :func:`clip_pseudo_grad`: Delta <- Delta * min(1, c / (||Delta|| + 1e-6)).

:func:`distributed_sync` runs the same outer step across real processes with
``torch.distributed.all_reduce`` (any backend; the tests use gloo on two CPU processes).
"""
from __future__ import annotations

import math

import torch

from lab.checks import check_int, check_positive, check_range, check_tensor


def pseudo_gradients(anchor: torch.Tensor, workers: torch.Tensor) -> torch.Tensor:
    """Delta_k = theta_anchor - theta_k for every worker; ``anchor`` (p,), ``workers`` (K, p)."""
    check_tensor("anchor", anchor, ndim=1)
    check_tensor("workers", workers, ndim=2)
    if workers.shape[1] != anchor.shape[0]:
        raise ValueError(f"workers must have shape (K, {anchor.shape[0]}), got {tuple(workers.shape)}")
    return anchor.unsqueeze(0) - workers  # (K, p)


def norm_weights(norms: torch.Tensor, temperature: float) -> torch.Tensor:
    """w_k = softmax_k(-n_k / T): EDiT's norm-weighted averaging (favours small pseudo-gradients)."""
    check_positive("temperature", temperature)
    return torch.softmax(-norms / temperature, dim=0)  # (K,)


def clip_pseudo_grad(delta: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """Delta * min(1, c / (||Delta|| + 1e-6)); ``max_norm=None`` leaves Delta unchanged."""
    if max_norm is None:
        return delta
    check_positive("max_norm", max_norm)
    scale = min(1.0, max_norm / (float(delta.norm()) + 1e-6))
    return delta * scale


class EWMADetector:
    """Per-worker anomaly detector on pseudo-gradient norms (EDiT's anomaly elimination).

    For each worker: z = (n - m) / s (z = 0 while fewer than ``warmup`` observations or s = 0);
    the worker is an outlier if z > threshold * max(1, std(last ``warmup`` positive z-scores)).
    Then, with the raw n (also for a flagged worker): m_new = m + alpha (n - m),
    M2 <- (1 - alpha)(M2 + alpha (n - m)(n - m_new)), s = sqrt(M2) (0 before two observations).
    Only increases are flagged.
    """

    def __init__(self, num_workers: int, *, alpha: float = 0.02, warmup: int = 120, threshold: float = 3.0):
        self.num_workers = check_int("num_workers", num_workers, minimum=1)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0, lo_open=True)
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.threshold = check_positive("threshold", threshold)
        self.mean = [0.0] * num_workers
        self.m2 = [0.0] * num_workers
        self.count = [0] * num_workers
        self.z_window: list[list[float]] = [[] for _ in range(num_workers)]

    def __call__(self, norms: torch.Tensor) -> torch.Tensor:
        """Flag outliers among ``norms`` (K,) and update the statistics; returns a bool mask (K,)."""
        check_tensor("norms", norms, ndim=1)
        if norms.shape[0] != self.num_workers:
            raise ValueError(f"norms must have {self.num_workers} entries, got {norms.shape[0]}")
        flags = []
        for k, n in enumerate(norms.tolist()):
            std = math.sqrt(self.m2[k]) if self.count[k] >= 2 else 0.0
            z = 0.0 if self.count[k] < self.warmup or std == 0.0 else (n - self.mean[k]) / std
            window = self.z_window[k]
            spread = float(torch.tensor(window, device="cpu").std()) if len(window) >= 2 else 0.0
            flags.append(z > self.threshold * max(1.0, spread))
            if z > 0:
                window.append(z)
                del window[:-max(self.warmup, 1)]
            # m_new = m + alpha (n - m);  M2 <- (1 - alpha)(M2 + alpha (n - m_old)(n - m_new))
            old = self.mean[k] if self.count[k] > 0 else n
            new = old + self.alpha * (n - old)
            self.m2[k] = (1 - self.alpha) * (self.m2[k] + self.alpha * (n - old) * (n - new))
            self.mean[k] = new
            self.count[k] += 1
        return torch.tensor(flags, dtype=torch.bool, device=norms.device)

    def state_dict(self) -> dict:
        return {"mean": list(self.mean), "m2": list(self.m2), "count": list(self.count),
                "z_window": [list(w) for w in self.z_window]}


class OuterSGD:
    """The outer optimizer: SGD with (Nesterov) momentum on the pseudo-gradient, torch semantics.

    Args:
        lr: eta_out, outer learning rate.
        momentum: mu; 0 disables the buffer.
        nesterov: Nesterov look-ahead (DiLoCo) instead of heavy-ball momentum.
    """

    def __init__(self, *, lr: float = 0.7, momentum: float = 0.9, nesterov: bool = True):
        self.lr = check_positive("lr", lr)
        self.momentum = check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov needs momentum > 0")
        self.nesterov = bool(nesterov)
        self.buf: torch.Tensor | None = None

    def step(self, anchor: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Return the new anchor given the reduced pseudo-gradient ``delta`` (p,)."""
        check_tensor("delta", delta, ndim=1)
        if self.momentum == 0.0:
            return anchor - self.lr * delta
        # b <- Delta (first step) ; b <- mu b + Delta
        self.buf = delta.clone() if self.buf is None else self.momentum * self.buf + delta
        direction = delta + self.momentum * self.buf if self.nesterov else self.buf
        return anchor - self.lr * direction  # (p,)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "momentum_buffer": None if self.buf is None else self.buf.clone()}


def distributed_sync(anchor: torch.Tensor, local: torch.Tensor, outer: OuterSGD, *,
                     temperature: float | None = None, max_norm: float | None = None,
                     group=None) -> torch.Tensor:
    """One outer step across processes: every rank passes the anchor and its own local model.

    Delta_r = anchor - local_r; with ``temperature`` T the ranks are weighted by
    softmax_r(-||Delta_r|| / T) (computed with two all-reduces), else averaged; the result is
    clipped to ``max_norm`` and handed to ``outer``. Every rank returns the same new anchor.
    """
    import torch.distributed as dist

    check_tensor("local", local, ndim=1)
    delta = anchor - local  # (p,)
    if temperature is None:
        dist.all_reduce(delta, op=dist.ReduceOp.SUM, group=group)
        delta = delta / dist.get_world_size(group)
    else:
        check_positive("temperature", temperature)
        logit = -delta.norm() / temperature
        peak = logit.clone()
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        weight = torch.exp(logit - peak)
        packed = torch.cat([weight * delta, weight.reshape(1)])  # (p + 1,)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        delta = packed[:-1] / packed[-1]
    return outer.step(anchor, clip_pseudo_grad(delta, max_norm))
