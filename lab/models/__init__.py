"""Tiny models: MLP, tiny causal transformer, tabular policy, 2-D velocity field (plain nn.Modules)."""
from lab.models.mlp import MLP  # noqa: F401
