"""trainlab: small, complete, tested implementations of modern training algorithms.

Subpackages, one per catalog kind or area: ``optim`` (optimizers), ``rl`` (advantage estimators
and policy losses), ``preference`` (preference losses), ``sampling`` (samplers and curricula),
``rewards`` (reward shaping and weighting), ``federated``, ``distributed``, ``moe``, ``peft``,
``merge``, ``flow``, ``continual``, ``solvers``, ``models``, ``experiments``, ``viz``. Every
algorithm is in :mod:`lab.registry`.
"""
from lab.history import History, Runs  # noqa: F401
from lab.registry import available, info, make, register  # noqa: F401

__version__ = "0.1.0"
