"""Small classification data that ships with a package (no download at run time).

:func:`digits` loads scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), scales the
pixels to [0, 1], and splits them into train and test sets with an explicit generator.
"""
from __future__ import annotations

import gzip
import importlib.util
import pathlib
from functools import lru_cache

import numpy as np
import torch


def _digits_csv() -> pathlib.Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz`` (what ``load_digits`` reads), found without
    importing scikit-learn; None when the package or the file is not where it is expected."""
    spec = importlib.util.find_spec("sklearn")         # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = pathlib.Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _digits_arrays_sklearn() -> tuple[np.ndarray, np.ndarray]:
    """The arrays through ``sklearn.datasets.load_digits`` (imports scikit-learn: seconds)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(pixels / 16 as float32 (1797, 64), labels as int64 (1797,))``.

    Reads scikit-learn's data file the way ``load_digits`` does (``np.loadtxt`` of the gzip'd CSV,
    64 pixel columns then the label) without importing scikit-learn, whose import costs seconds
    on a loaded machine: the same arrays (tests/toy_envs/test_datasets.py checks them against
    ``load_digits``). Falls back to ``load_digits`` when the file is not found.
    """
    path = _digits_csv()
    if path is None:
        return _digits_arrays_sklearn()
    with gzip.open(path, mode="rt", encoding="utf-8") as fh:
        table = np.loadtxt(fh, delimiter=",")
    return (table[:, :-1] / 16.0).astype(np.float32), table[:, -1].astype(int).astype(np.int64)


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
