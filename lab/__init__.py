"""trainlab: small, complete, tested implementations of modern training algorithms.

Subpackages: ``optim`` (optimizers), ``rl`` (advantages, policy and preference losses, samplers,
reward shaping), ``federated``, ``moe``, ``peft``, ``flow``, ``continual``, ``solvers``,
``models``, ``experiments``, ``viz``. Every algorithm is in :mod:`lab.registry`.
"""
from lab.history import History, Runs  # noqa: F401
from lab.registry import available, info, make, register  # noqa: F401

__version__ = "0.1.0"
