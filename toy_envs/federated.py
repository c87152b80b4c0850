"""Federated client problems: every client holds its own data; the server wants one model.

A :class:`FederatedProblem` stores the data of all ``N`` clients padded into one tensor, so the
clients can be trained side by side with ``torch.func.vmap``::

    X     (N, n_max, *features)   client i's examples in rows 0..n_i-1, zeros after
    y     (N, n_max[, C])         targets (real, {0, 1}, class ids, or soft labels)
    mask  (N, n_max)              1.0 on real rows, 0.0 on padding
    loss_fn(x, X_i, y_i, mask_i)  the client loss F_i(x) = masked mean of the per-example loss

The global objective is ``F(x) = sum_i alpha_i F_i(x)`` with ``alpha = weights``: ``1/N``
("uniform", the convention of the FedAU and FedVARP papers) or ``n_i / sum_j n_j`` ("samples",
FedAvg's). Three generators:

- :func:`least_squares`: ``F_i(x) = 1/(2 n_i) ||X_i x - y_i||^2``. Clients fall into ``groups``;
  each group has its own optimum ``w_g ~ N(0, zeta^2 I)`` (the data heterogeneity), so the
  clients disagree. The global optimum ``x* = (sum alpha_i A_i)^-1 sum alpha_i b_i`` with
  ``A_i = X_i^T X_i / n_i``, ``b_i = X_i^T y_i / n_i`` is known exactly.
- :func:`logistic_regression`: a pool of labelled points from one linear teacher, split over
  clients IID or by Dirichlet(alpha) label skew; ridge-regularized binary cross-entropy, whose
  optimum ``x*`` is found by Newton's method.
- :func:`digits_mlp`: scikit-learn's digits (``toy_envs.datasets.digits``) split IID or by
  Dirichlet(alpha), an MLP (``lab.models.mlp.MLP``) evaluated on the flat parameter vector with
  ``torch.func.functional_call``; no known optimum, test accuracy instead.

Held-out data comes in two disjoint splits from the same global mixture: ``validation``, which a
server may use to make choices (``knowledge_fusion`` scores and weights its sources on it), and
``test``, which is only reported (``accuracy``). Selecting on the split one reports would make
the report optimistic. The validation draws come from their own random stream, so adding them
left every client's data and the test split unchanged.

Partitions: :func:`iid_partition` (client sizes skewed log-normally by ``size_skew``) and
:func:`dirichlet_partition` (Hsu et al., "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification", arXiv:1909.06335: for each class, the shares
of the N clients are drawn from Dir(alpha); alpha -> 0 gives one class per client, alpha -> inf
IID). ``label_dist`` (N, L) holds each client's label (or group) histogram; participation models
use it to make participation correlated with data, which is what makes FedAvg biased.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---- per-client losses (pure; vmapped over clients) ------------------------------------------
def squared_loss(x: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1/(2 n) sum_j mask_j (X_j x - y_j)^2`` with ``n = sum_j mask_j``."""
    residual = X @ x - y  # (n,)
    return 0.5 * (mask * residual**2).sum() / mask.sum().clamp_min(1.0)


def logistic_loss(x: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *,
                  l2: float) -> torch.Tensor:
    """Masked mean binary cross-entropy of ``sigmoid(X x)`` against ``y`` in [0, 1], plus ``l2/2 ||x||^2``."""
    logits = X @ x  # (n,)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (mask * bce).sum() / mask.sum().clamp_min(1.0) + 0.5 * l2 * (x * x).sum()


def _matvec(X: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``X_m x_m`` for each client: X (M, n, d), x (M, d) -> (M, n) (a batched matmul)."""
    return torch.bmm(X, x.unsqueeze(-1)).squeeze(-1)


def _rmatvec(X: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``X_m^T r_m`` for each client: X (M, n, d), r (M, n) -> (M, d)."""
    return torch.bmm(r.unsqueeze(1), X).squeeze(1)


def squared_loss_batch(x, X, y, mask):
    """``squared_loss`` of M clients at once: x (M, d), X (M, n, d), y and mask (M, n) -> (M,)."""
    residual = _matvec(X, x) - y
    return 0.5 * (mask * residual**2).sum(1) / mask.sum(1).clamp_min(1.0)


def squared_grad_batch(x, X, y, mask):
    """Gradient of ``squared_loss`` for M clients at once, (M, d): ``X^T (mask * (X x - y)) / n``."""
    residual = _matvec(X, x) - y
    return _rmatvec(X, mask * residual) / mask.sum(1).clamp_min(1.0)[:, None]


def logistic_loss_batch(x, X, y, mask, *, l2: float):
    """``logistic_loss`` of M clients at once, (M,)."""
    logits = _matvec(X, x)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (mask * bce).sum(1) / mask.sum(1).clamp_min(1.0) + 0.5 * l2 * (x * x).sum(1)


def logistic_grad_batch(x, X, y, mask, *, l2: float):
    """Gradient of ``logistic_loss`` for M clients at once, (M, d): ``X^T (mask (sigmoid(X x) - y)) / n + l2 x``."""
    err = torch.sigmoid(_matvec(X, x)) - y
    return _rmatvec(X, mask * err) / mask.sum(1).clamp_min(1.0)[:, None] + l2 * x


def _unflatten(x: torch.Tensor, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, torch.Tensor]:
    params, start = {}, 0
    for name, shape in shapes:
        size = math.prod(shape)
        params[name] = x[start:start + size].reshape(shape)
        start += size
    return params


def mlp_loss(x: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *,
             model: torch.nn.Module, shapes: tuple) -> torch.Tensor:
    """Masked mean cross-entropy of ``model`` with flat parameters ``x``; ``y`` = class ids or soft labels (n, C)."""
    logits = torch.func.functional_call(model, _unflatten(x, shapes), (X,))  # (n, C)
    logp = torch.log_softmax(logits, dim=-1)
    if y.dim() == 2:  # soft labels (used by the server's gradient inversion)
        nll = -(y * logp).sum(-1)
    else:
        nll = -logp.gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
    return (mask * nll).sum() / mask.sum().clamp_min(1.0)


def mlp_logits(x: torch.Tensor, X: torch.Tensor, *, model: torch.nn.Module, shapes: tuple) -> torch.Tensor:
    return torch.func.functional_call(model, _unflatten(x, shapes), (X,))


# ---- data views ------------------------------------------------------------------------------
@dataclass
class ClientData:
    """The padded data of a set of clients (``client_ids``), ready for ``vmap`` over clients."""

    client_ids: torch.Tensor  # (M,) long
    X: torch.Tensor  # (M, n_max, *features)
    y: torch.Tensor  # (M, n_max[, C])
    mask: torch.Tensor  # (M, n_max)
    num_samples: torch.Tensor  # (M,) long
    loss_fn: LossFn
    kind: str  # "least_squares", "logistic", "classification"
    grad_batch: Callable | None = None  # closed-form gradient of M clients at once (linear models)

    def __len__(self) -> int:
        return int(self.client_ids.numel())

    def select(self, keep: torch.Tensor) -> "ClientData":
        """The clients where the bool mask ``keep`` (M,) is true."""
        return ClientData(self.client_ids[keep], self.X[keep], self.y[keep], self.mask[keep],
                          self.num_samples[keep], self.loss_fn, self.kind, self.grad_batch)

    def grads(self, x: torch.Tensor, X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-client gradients (M, d) at x (M, d): ``vmap(grad(loss_fn))``, or the closed form when given."""
        if self.grad_batch is not None:
            return self.grad_batch(x, X, y, mask)
        return torch.func.vmap(torch.func.grad(self.loss_fn))(x, X, y, mask)

    def batch(self, generator: torch.Generator, batch_size: int | None):
        """A minibatch per client, drawn with replacement from its own rows; ``None`` = all rows."""
        if batch_size is None or batch_size >= self.X.shape[1]:
            return self.X, self.y, self.mask
        dev = self.X.device
        u = torch.rand(len(self), batch_size, generator=generator, dtype=torch.float64, device=generator.device)
        idx = (u.to(dev) * self.num_samples.to(dev)[:, None]).long()  # (M, B) rows in [0, n_i)
        rows = torch.arange(len(self), device=dev)[:, None]
        return self.X[rows, idx], self.y[rows, idx], torch.ones(idx.shape, dtype=self.mask.dtype, device=dev)

    def normal_equations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Least squares only: ``A_i = X_i^T X_i / n_i`` (M, d, d) and ``b_i = X_i^T y_i / n_i`` (M, d)."""
        if self.kind != "least_squares":
            raise ValueError(f"normal_equations needs a least-squares problem, got kind {self.kind!r}")
        Xm = self.X * self.mask[..., None]
        n = self.num_samples.to(self.X.dtype)[:, None]
        A = Xm.transpose(1, 2) @ self.X / n[..., None]  # (M, d, d)
        b = (Xm * self.y[..., None]).sum(1) / n  # (M, d)
        return A, b


@dataclass
class FederatedProblem:
    """N clients' data, the global weights alpha, a start point and (when known) the optimum."""

    name: str
    kind: str  # "least_squares", "logistic", "classification"
    X: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    num_samples: torch.Tensor  # (N,) long
    weights: torch.Tensor  # (N,) alpha_i, sums to 1
    loss_fn: LossFn
    x0: torch.Tensor  # (d,)
    label_dist: torch.Tensor  # (N, L) label (or group) histogram of each client, rows sum to 1
    x_star: torch.Tensor | None = None
    test: tuple[torch.Tensor, torch.Tensor] | None = None  # (X_test, y_test) from the global mixture: reported only
    validation: tuple[torch.Tensor, torch.Tensor] | None = None  # (X_val, y_val), disjoint from test: for server-side choices
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    info: dict = field(default_factory=dict)
    loss_batch: Callable | None = None  # closed-form losses of M clients at once (linear models)
    grad_batch: Callable | None = None  # closed-form gradients of M clients at once (linear models)

    @property
    def num_clients(self) -> int:
        return int(self.num_samples.numel())

    @property
    def dim(self) -> int:
        return int(self.x0.numel())

    def clients(self, ids) -> ClientData:
        """The data of clients ``ids`` (a list or a long tensor)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device="cpu").reshape(-1)
        if ids.numel() == self.num_clients and bool((ids == torch.arange(self.num_clients, device="cpu")).all()):
            return ClientData(ids, self.X, self.y, self.mask, self.num_samples, self.loss_fn, self.kind,
                              self.grad_batch)  # everyone: views, no copy
        rows = ids.to(self.X.device)
        return ClientData(ids, self.X[rows], self.y[rows], self.mask[rows], self.num_samples[rows],
                          self.loss_fn, self.kind, self.grad_batch)

    def to(self, device) -> "FederatedProblem":
        """A copy with the clients' data, weights, start point, optimum and held-out splits on
        ``device`` (``label_dist`` stays on the CPU: participation rates are drawn there)."""
        import copy

        device = torch.device(device)
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        pair = lambda p: None if p is None else (p[0].to(device), p[1].to(device))  # noqa: E731
        loss_fn, logits_fn = self.loss_fn, self.logits_fn
        model = getattr(loss_fn, "keywords", {}).get("model")
        if model is not None:  # the MLP problems: the module moves too
            moved = copy.deepcopy(model).to(device)
            loss_fn = partial(loss_fn.func, *loss_fn.args, **{**loss_fn.keywords, "model": moved})
            logits_fn = partial(logits_fn.func, *logits_fn.args, **{**logits_fn.keywords, "model": moved})
        return dataclasses.replace(self, X=move(self.X), y=move(self.y), mask=move(self.mask),
                                   num_samples=move(self.num_samples), weights=move(self.weights), x0=move(self.x0),
                                   x_star=move(self.x_star), test=pair(self.test), validation=pair(self.validation),
                                   loss_fn=loss_fn, logits_fn=logits_fn)

    def client(self, i: int) -> ClientData:
        return self.clients([i])

    def client_losses(self, x: torch.Tensor) -> torch.Tensor:
        """``F_i(x)`` for every client, (N,)."""
        if self.loss_batch is not None:
            return self.loss_batch(x.expand(self.num_clients, -1), self.X, self.y, self.mask)
        return torch.func.vmap(self.loss_fn, in_dims=(None, 0, 0, 0))(x, self.X, self.y, self.mask)

    def global_loss(self, x: torch.Tensor) -> float:
        """``F(x) = sum_i alpha_i F_i(x)``."""
        return float((self.weights * self.client_losses(x)).sum())

    def distance(self, x: torch.Tensor) -> float:
        """``||x - x*||`` (NaN when the optimum is unknown)."""
        return float("nan") if self.x_star is None else float((x - self.x_star).norm())

    def accuracy(self, x: torch.Tensor) -> float:
        """Test accuracy of a classifier (NaN for regression)."""
        if self.test is None or self.kind == "least_squares":
            return float("nan")
        X, y = self.test
        if self.kind == "logistic":
            return float(((X @ x > 0).to(y.dtype) == y).float().mean())
        return float((self.logits_fn(x, X).argmax(-1) == y).float().mean())


# ---- partitions ------------------------------------------------------------------------------
def client_sizes(num_clients: int, total: int, size_skew: float, rng: np.random.Generator,
                 min_size: int = 2) -> np.ndarray:
    """Client sizes summing to ``total``: equal for ``size_skew=0``, log-normal(0, size_skew) shares otherwise."""
    if total < num_clients * min_size:
        raise ValueError(f"total={total} too small for {num_clients} clients of >= {min_size} examples")
    shares = np.exp(size_skew * rng.standard_normal(num_clients))
    sizes = min_size + np.floor(shares / shares.sum() * (total - num_clients * min_size)).astype(int)
    sizes[np.argmax(sizes)] += total - sizes.sum()
    return sizes


def iid_partition(n: int, num_clients: int, rng: np.random.Generator, size_skew: float = 0.0,
                  min_size: int = 2) -> list[np.ndarray]:
    """A random permutation of ``range(n)`` cut into client shards (sizes skewed by ``size_skew``)."""
    sizes = client_sizes(num_clients, n, size_skew, rng, min_size)
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
                        min_size: int = 2, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed split: class c's examples are shared among clients by ``q_c ~ Dir(alpha 1_N)``.

    Redraws until every client has at least ``min_size`` examples (``max_tries`` at most).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            q = rng.dirichlet(alpha * np.ones(num_clients))
            cuts = (np.cumsum(q)[:-1] * len(idx)).astype(int)
            for shard, part in zip(shards, np.split(idx, cuts)):
                shard.extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [rng.permutation(np.array(s, dtype=np.int64)) for s in shards]
    raise ValueError(f"could not give every client >= {min_size} examples with alpha={alpha}; "
                     f"raise alpha or lower num_clients")


def _pad(parts_X: list[torch.Tensor], parts_y: list[torch.Tensor]):
    n = torch.tensor([len(p) for p in parts_X], dtype=torch.long)
    n_max = int(n.max())
    X = torch.zeros((len(parts_X), n_max, *parts_X[0].shape[1:]), dtype=parts_X[0].dtype)
    y = torch.zeros((len(parts_y), n_max, *parts_y[0].shape[1:]), dtype=parts_y[0].dtype)
    mask = torch.zeros(len(parts_X), n_max, dtype=parts_X[0].dtype)
    for i, (xi, yi) in enumerate(zip(parts_X, parts_y)):
        X[i, :len(xi)], y[i, :len(yi)], mask[i, :len(xi)] = xi, yi, 1.0
    return X, y, mask, n


def _weights(n: torch.Tensor, weighting: str, dtype: torch.dtype) -> torch.Tensor:
    if weighting == "uniform":
        return torch.full(n.shape, 1.0 / len(n), dtype=dtype)
    if weighting == "samples":
        return n.to(dtype) / n.sum()
    raise ValueError(f"weighting must be 'uniform' or 'samples', got {weighting!r}")


def _histograms(labels: list[np.ndarray], num_labels: int) -> torch.Tensor:
    h = np.stack([np.bincount(l, minlength=num_labels) for l in labels]).astype(np.float64)
    return torch.from_numpy(h / h.sum(1, keepdims=True).clip(min=1))


# ---- generators ------------------------------------------------------------------------------
def least_squares(num_clients: int = 20, dim: int = 10, samples_per_client: int = 20, *,
                  heterogeneity: float = 1.0, groups: int = 4, noise: float = 0.1,
                  size_skew: float = 0.0, weighting: str = "uniform", seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> FederatedProblem:
    """Linear regression clients in ``groups`` with optima ``w_g ~ N(0, heterogeneity^2 I)``.

    Client i in group g: ``X_i`` rows ~ N(0, I) scaled per client by ``s_i ~ U[0.7, 1.4]``
    (different curvatures ``A_i``, so local steps drift), ``y = X_i (w_g + 0.1 eps_i) + noise``.
    """
    if num_clients < 1 or dim < 1 or groups < 1:
        raise ValueError("num_clients, dim and groups must be >= 1")
    if heterogeneity < 0 or noise < 0:
        raise ValueError("heterogeneity and noise must be >= 0")
    rng = np.random.default_rng(seed)
    sizes = client_sizes(num_clients, samples_per_client * num_clients, size_skew, rng,
                         min_size=max(2, min(dim, samples_per_client)))
    centers = heterogeneity * rng.standard_normal((groups, dim))
    group = np.arange(num_clients) % groups
    Xs, ys, Xt, yt, Xv, yv, models = [], [], [], [], [], [], []
    for i, n in enumerate(sizes):
        scale = rng.uniform(0.7, 1.4, size=dim)
        w = centers[group[i]] + 0.1 * heterogeneity * rng.standard_normal(dim)
        models.append((scale, w))
        for out_X, out_y, m in ((Xs, ys, n), (Xt, yt, 20)):
            X = rng.standard_normal((m, dim)) * scale
            out_X.append(torch.tensor(X, dtype=dtype))
            out_y.append(torch.tensor(X @ w + noise * rng.standard_normal(m), dtype=dtype))
    val_rng = np.random.default_rng([seed, 1])  # its own stream: the splits above are unchanged
    for scale, w in models:
        X = val_rng.standard_normal((20, dim)) * scale
        Xv.append(torch.tensor(X, dtype=dtype))
        yv.append(torch.tensor(X @ w + noise * val_rng.standard_normal(20), dtype=dtype))
    X, y, mask, n = _pad(Xs, ys)
    alpha = _weights(n, weighting, dtype)
    problem = FederatedProblem(
        "least_squares", "least_squares", X, y, mask, n, alpha, squared_loss, torch.zeros(dim, dtype=dtype),
        _histograms([np.array([g]) for g in group], groups), test=(torch.cat(Xt), torch.cat(yt)),
        validation=(torch.cat(Xv), torch.cat(yv)),
        info={"heterogeneity": heterogeneity, "groups": groups, "group": group.tolist()},
        loss_batch=squared_loss_batch, grad_batch=squared_grad_batch)
    A, b = problem.clients(range(num_clients)).normal_equations()
    problem.x_star = torch.linalg.solve((alpha[:, None, None] * A).sum(0), (alpha[:, None] * b).sum(0))
    return problem


def logistic_regression(num_clients: int = 20, dim: int = 10, samples_per_client: int = 40, *,
                        alpha: float | None = 0.5, size_skew: float = 0.0, l2: float = 1e-2,
                        weighting: str = "uniform", seed: int = 0,
                        dtype: torch.dtype = torch.float64) -> FederatedProblem:
    """Binary logistic regression; ``alpha=None`` = IID split, else Dirichlet(alpha) label skew.

    Points ``z ~ N(0, I)`` (plus a class-dependent shift), labels from a linear teacher with
    10 % label noise. ``x*`` minimizes the ridge-regularized global objective (Newton's method).
    """
    rng = np.random.default_rng(seed)
    total = samples_per_client * num_clients
    teacher = rng.standard_normal(dim)
    Z = rng.standard_normal((total + 400, dim))
    labels = (Z @ teacher > 0).astype(np.int64)
    flip = rng.random(len(labels)) < 0.1
    labels[flip] = 1 - labels[flip]
    Z += 0.5 * (2 * labels[:, None] - 1) * teacher / np.linalg.norm(teacher)
    Zt, yt = Z[total:], labels[total:]
    Z, labels = Z[:total], labels[:total]
    val_rng = np.random.default_rng([seed, 1])  # its own stream: the splits above are unchanged
    Zv = val_rng.standard_normal((400, dim))
    yv = (Zv @ teacher > 0).astype(np.int64)
    flip_v = val_rng.random(len(yv)) < 0.1
    yv[flip_v] = 1 - yv[flip_v]
    Zv += 0.5 * (2 * yv[:, None] - 1) * teacher / np.linalg.norm(teacher)
    parts = (iid_partition(total, num_clients, rng, size_skew) if alpha is None
             else dirichlet_partition(labels, num_clients, alpha, rng))
    X, y, mask, n = _pad([torch.tensor(Z[p], dtype=dtype) for p in parts],
                         [torch.tensor(labels[p], dtype=dtype) for p in parts])
    loss = partial(logistic_loss, l2=l2)
    problem = FederatedProblem(
        "logistic_regression", "logistic", X, y, mask, n, _weights(n, weighting, dtype), loss,
        torch.zeros(dim, dtype=dtype), _histograms([labels[p] for p in parts], 2),
        test=(torch.tensor(Zt, dtype=dtype), torch.tensor(yt, dtype=dtype)),
        validation=(torch.tensor(Zv, dtype=dtype), torch.tensor(yv, dtype=dtype)),
        info={"alpha": alpha, "l2": l2},
        loss_batch=partial(logistic_loss_batch, l2=l2), grad_batch=partial(logistic_grad_batch, l2=l2))
    problem.x_star = _newton(problem)
    return problem


def _newton(problem: FederatedProblem, iters: int = 30) -> torch.Tensor:
    """Minimizer of the (strongly convex) global objective by Newton's method."""
    f = _global_loss_tensor(problem)
    x = problem.x0.clone()
    for _ in range(iters):
        step = torch.linalg.solve(torch.func.hessian(f)(x), torch.func.grad(f)(x))
        x = x - step
        if step.norm() < 1e-12:
            break
    return x


def _global_loss_tensor(problem: FederatedProblem):
    def f(x):
        losses = torch.func.vmap(problem.loss_fn, in_dims=(None, 0, 0, 0))(x, problem.X, problem.y, problem.mask)
        return (problem.weights * losses).sum()
    return f


def digits_mlp(num_clients: int = 10, *, alpha: float | None = 0.5, hidden: tuple[int, ...] = (32,),
               size_skew: float = 0.0, weighting: str = "samples", seed: int = 0,
               dtype: torch.dtype = torch.float32) -> FederatedProblem:
    """scikit-learn digits over ``num_clients`` clients (IID for ``alpha=None``, else Dirichlet),
    with an MLP ``64 -> hidden -> 10`` (``hidden=()`` = softmax regression). The held-out quarter
    of the data is split in two halves: ``validation`` (first) and ``test`` (second)."""
    from lab.models.mlp import MLP
    from toy_envs.datasets import digits

    x_train, y_train, x_test, y_test = digits(seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    labels = y_train.numpy()
    parts = (iid_partition(len(labels), num_clients, rng, size_skew) if alpha is None
             else dirichlet_partition(labels, num_clients, alpha, rng))
    X, y, mask, n = _pad([x_train[p] for p in parts], [y_train[p] for p in parts])
    torch_rng = torch.Generator().manual_seed(seed)
    model = MLP(64, hidden, 10).to(dtype)
    with torch.no_grad():
        for p in model.parameters():  # deterministic init from the seed, no global RNG
            p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=torch_rng) / math.sqrt(max(p.shape[-1], 1)))
    shapes = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    x0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    return FederatedProblem(
        "digits_mlp", "classification", X, y, mask.to(dtype), n, _weights(n, weighting, dtype),
        partial(mlp_loss, model=model, shapes=shapes), x0, _histograms([labels[p] for p in parts], 10),
        test=(x_test[len(y_test) // 2:], y_test[len(y_test) // 2:]),
        validation=(x_test[:len(y_test) // 2], y_test[:len(y_test) // 2]),
        logits_fn=partial(mlp_logits, model=model, shapes=shapes),
        info={"alpha": alpha, "hidden": list(hidden)})


PROBLEMS = {"least_squares": least_squares, "logistic_regression": logistic_regression,
            "digits_mlp": digits_mlp}
"""Problem generators by name (the experiments' ``problem`` field)."""


def make_problem(name: str, **kwargs) -> FederatedProblem:
    """Build problem ``name`` (a key of :data:`PROBLEMS`) with keyword arguments."""
    if name not in PROBLEMS:
        raise KeyError(f"unknown federated problem {name!r}; valid names: {', '.join(PROBLEMS)}")
    return PROBLEMS[name](**kwargs)
