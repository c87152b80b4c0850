"""Shared fixtures of the federated tests: small problems, built once per module."""
import pytest

from toy_envs.federated import least_squares


@pytest.fixture(scope="module")
def ls_small():
    """8 least-squares clients, d = 4, two groups of optima (non-IID)."""
    return least_squares(num_clients=8, dim=4, samples_per_client=12, heterogeneity=1.0, groups=2, seed=1)
