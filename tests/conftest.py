"""Shared test setup: deterministic, single-threaded torch (CI has 2 cores; pytest-xdist uses both)."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def generator():
    """A seeded torch generator: every stochastic routine takes one explicitly."""
    return torch.Generator().manual_seed(0)
