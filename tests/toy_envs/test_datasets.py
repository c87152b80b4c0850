"""toy_envs.datasets.digits: scikit-learn's digits read from its data file without importing
scikit-learn, the same arrays as ``load_digits``."""
import json
import subprocess
import sys

import numpy as np

from toy_envs import datasets


def test_the_arrays_equal_those_of_load_digits():
    datasets._digits_arrays.cache_clear()
    x, y = datasets._digits_arrays()
    ref_x, ref_y = datasets._digits_arrays_sklearn()
    assert datasets._digits_csv() is not None          # the direct path is the one taken here
    assert x.dtype == ref_x.dtype == np.float32 and y.dtype == ref_y.dtype == np.int64
    assert x.shape == (1797, 64) and np.array_equal(x, ref_x) and np.array_equal(y, ref_y)
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))


def test_digits_imports_no_sklearn():
    code = ("import json, sys; from toy_envs.datasets import digits; xt, yt, xs, ys = digits(); "
            "print(json.dumps([any(m.split('.')[0] == 'sklearn' for m in sys.modules), "
            "len(yt) + len(ys)]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [False, 1797]


def test_without_the_data_file_it_falls_back_to_load_digits(monkeypatch):
    monkeypatch.setattr(datasets, "_digits_csv", lambda: None)
    datasets._digits_arrays.cache_clear()
    try:
        x, y = datasets._digits_arrays()
        assert x.shape == (1797, 64) and np.array_equal(y, datasets._digits_arrays_sklearn()[1])
    finally:
        datasets._digits_arrays.cache_clear()
