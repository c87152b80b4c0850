"""Small classification data that ships with a package (no download at run time).

:func:`digits` loads scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), scales the
pixels to [0, 1], and splits them into train and test sets with an explicit generator.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def digits(test_fraction: float = 0.25, seed: int = 0, dtype: torch.dtype = torch.float32):
    """``(x_train (N, 64), y_train (N,), x_test, y_test)`` of the digits data set.

    The split is a random permutation drawn from ``torch.Generator().manual_seed(seed)``. The
    tensors are on the CPU (also inside a ``torch.device(...)`` context); callers move them.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    x, y = _digits_arrays()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g, device=g.device)
    n_test = int(round(test_fraction * len(y)))
    x_t, y_t = torch.from_numpy(x).to(dtype)[perm], torch.from_numpy(y)[perm]
    return x_t[n_test:], y_t[n_test:], x_t[:n_test], y_t[:n_test]
