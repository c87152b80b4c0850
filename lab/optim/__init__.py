"""Optimizers: ``torch.optim.Optimizer`` subclasses with the papers' defaults.

Find them by name with ``lab.registry.make("optimizer", name, params, ...)``.
"""
from lab.optim.baselines import SGD, Adam, AdamW  # noqa: F401
