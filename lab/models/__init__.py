"""Tiny models: MLP, tiny causal transformer, tabular policy, 2-D velocity field (plain nn.Modules)."""
from lab.models.mlp import MLP  # noqa: F401
from lab.models.policy import Generation, Scored, TabularPolicy, frozen_reference, generate  # noqa: F401
from lab.models.transformer import TinyTransformer  # noqa: F401
from lab.models.velocity import VelocityField  # noqa: F401
from lab.models.ghost_bn import GhostBatchNorm1d  # noqa: F401
