"""Task sequences and synthetic data for the continual-learning and generalisation lessons.

Every generator takes an explicit ``seed`` (a fresh ``torch.Generator``) and returns tensors.

- :func:`split_digits`: class-incremental digits, task ``i`` holds the classes ``splits[i]``
  (one 10-way head; labels keep their digit value).
- :func:`permuted_digits`: domain-incremental digits, task 0 = the images, task ``i > 0`` = the
  same images with a fixed random pixel permutation (labels unchanged).
- :func:`linear_teacher`: ``y = <beta, x> + noise`` with ``x ~ N(0, I_d)``, ``||beta|| = 1``
  (high-dimensional dynamics, random-features double descent).
- :func:`simple_and_complex`: binary labels carried by a complex feature (small margin, spread
  over several coordinates) in every point, and by a simple feature (one large-margin
  coordinate) in a fraction of them (simplicity bias, USEFUL).
- :func:`opposing_signals`: weak core features plus one large feature shared by two small outlier
  groups with opposite labels (outliers with opposing signals).
- :func:`rotated_logistic_tasks`: 2-D logistic-regression tasks whose boundaries are rotated
  copies of each other (IBCL's task trade-offs).
"""
from __future__ import annotations

import math

import torch

from toy_envs.datasets import digits

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def split_digits(splits: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)),
                 seed: int = 0) -> list[Split]:
    """Class-incremental digits: per task ``(x_train, y_train, x_test, y_test)``.

    Task ``i`` keeps the examples whose digit lies in ``splits[i]``; labels stay 0..9.
    """
    if not splits or any(not s for s in splits):
        raise ValueError(f"splits must be a non-empty tuple of non-empty class tuples, got {splits}")
    x_tr, y_tr, x_te, y_te = digits(seed=seed)
    tasks = []
    for classes in splits:
        if any(not 0 <= c <= 9 for c in classes):
            raise ValueError(f"splits must hold digits 0..9, got {classes}")
        cls = torch.tensor(classes)
        keep_tr, keep_te = torch.isin(y_tr, cls), torch.isin(y_te, cls)
        tasks.append((x_tr[keep_tr], y_tr[keep_tr], x_te[keep_te], y_te[keep_te]))
    return tasks


def permuted_digits(n_tasks: int = 2, seed: int = 0) -> list[Split]:
    """Domain-incremental digits: task 0 = digits, task i > 0 = a fixed pixel permutation of them."""
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be an int >= 1, got {n_tasks!r}")
    x_tr, y_tr, x_te, y_te = digits(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    tasks = [(x_tr, y_tr, x_te, y_te)]
    for _ in range(n_tasks - 1):
        perm = torch.randperm(x_tr.shape[1], generator=g)
        tasks.append((x_tr[:, perm], y_tr, x_te[:, perm], y_te))
    return tasks


def linear_teacher(n: int, d: int, *, noise: float = 0.5, seed: int = 0,
                   beta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x (n, d), y (n,), beta (d,))`` with ``y = x @ beta + noise * N(0, 1)``, float64.

    ``beta`` is drawn once per seed with unit norm unless given (pass the same beta to draw a
    test set from the same teacher with another seed).
    """
    if n < 1 or d < 1:
        raise ValueError(f"n and d must be >= 1, got n={n}, d={d}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    g = torch.Generator().manual_seed(seed)
    if beta is None:
        beta = torch.randn(d, generator=g, dtype=torch.float64)
        beta = beta / beta.norm()
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ beta + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y, beta


def simple_and_complex(n: int = 600, *, simple_fraction: float = 0.7, d_complex: int = 10,
                       simple_margin: float = 2.0, complex_margin: float = 0.5, noise: float = 1.0,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x (n, 1 + d_complex), y (n,) in {0, 1}, has_simple (n,) bool)``.

    With ``s = 2y - 1``: coordinate 0 is ``s * simple_margin + 0.1 N(0,1)`` for the
    ``simple_fraction`` of points that carry the simple feature and pure noise ``N(0, 1)``
    otherwise; coordinates ``1..d_complex`` are ``s * complex_margin + noise * N(0, 1)`` each
    (margin ``sqrt(d_complex) * complex_margin`` along the diagonal, small per coordinate).
    Only the complex feature labels every point.
    """
    _check_fraction("simple_fraction", simple_fraction)
    if n < 2 or d_complex < 1:
        raise ValueError(f"n must be >= 2 and d_complex >= 1, got n={n}, d_complex={d_complex}")
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    s = (2 * y - 1).float()                                               # (n,)
    has_simple = torch.rand(n, generator=g) < simple_fraction             # (n,)
    simple = torch.where(has_simple, s * simple_margin + 0.1 * torch.randn(n, generator=g),
                         torch.randn(n, generator=g))
    # each complex coordinate carries s * complex_margin: margin sqrt(d) * complex_margin along 1/sqrt(d)
    complex_ = s[:, None] * complex_margin + noise * torch.randn(n, d_complex, generator=g)
    return torch.cat([simple[:, None], complex_], dim=1), y, has_simple


def opposing_signals(n: int = 400, *, d_core: int = 10, outlier_fraction: float = 0.05,
                     big: float = 10.0, core_signal: float = 0.5, seed: int = 0,
                     with_outliers: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x (n, d_core + 1), y (n,) in {0, 1}, group (n,))`` with group 0 = normal, 1 = A, 2 = B.

    Core features ``s * core_signal * e + N(0, I)`` (``s = 2y - 1``, ``e`` a fixed unit vector)
    weakly carry the label. The last coordinate ``x_big`` is ``N(0, 0.1^2)`` for normal points and
    ``big`` for groups A and B; group A has label 1 and group B label 0, so the large feature
    pushes the output one way for A and the other way for B (opposing signals). With
    ``with_outliers=False`` every point is normal.
    """
    _check_fraction("outlier_fraction", outlier_fraction)
    if n < 4:
        raise ValueError(f"n must be >= 4, got {n}")
    g = torch.Generator().manual_seed(seed)
    n_group = int(round(outlier_fraction * n)) if with_outliers else 0
    group = torch.zeros(n, dtype=torch.long)
    group[:n_group], group[n_group:2 * n_group] = 1, 2
    y = torch.randint(0, 2, (n,), generator=g)
    y[group == 1], y[group == 2] = 1, 0
    s = (2 * y - 1).float()
    e = torch.ones(d_core) / math.sqrt(d_core)
    core = s[:, None] * core_signal * e[None, :] + torch.randn(n, d_core, generator=g)
    x_big = torch.where(group > 0, torch.full((n,), float(big)), 0.1 * torch.randn(n, generator=g))
    return torch.cat([core, x_big[:, None]], dim=1), y, group


def rotated_logistic_tasks(n_tasks: int = 3, n: int = 200, *, angle: float = 60.0,
                           scale: float = 4.0, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per task ``(x (n, 2), y (n,) in {0, 1})``, float64, with ``P(y=1|x) = sigmoid(scale <w_i, x>)``.

    The true direction of task ``i`` is ``w_i = (cos(i * angle), sin(i * angle))`` (degrees), so
    neighbouring tasks disagree on the points between their boundaries.
    """
    if n_tasks < 1 or n < 2:
        raise ValueError(f"n_tasks must be >= 1 and n >= 2, got n_tasks={n_tasks}, n={n}")
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for i in range(n_tasks):
        theta = math.radians(i * angle)
        w = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64)
        x = torch.randn(n, 2, generator=g, dtype=torch.float64)
        p = torch.sigmoid(scale * x @ w)
        y = (torch.rand(n, generator=g, dtype=torch.float64) < p).long()
        tasks.append((x, y))
    return tasks


__all__ = ["split_digits", "permuted_digits", "linear_teacher", "simple_and_complex",
           "opposing_signals", "rotated_logistic_tasks"]
