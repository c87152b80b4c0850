"""A plain multi-layer perceptron, the small network of the optimizer and federated lessons."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lab.checks import check_int


class MLP(nn.Module):
    """``Linear -> act -> ... -> Linear``: ``in_dim -> hidden[0] -> ... -> out_dim``.

    Args:
        in_dim: input features.
        hidden: sizes of the hidden layers (empty = a linear model).
        out_dim: outputs (classes for classification).
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
        batchnorm: add ``BatchNorm1d`` after each hidden linear layer (used by the SAM lesson,
            whose second pass must not update running statistics).
    """

    _ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}

    def __init__(self, in_dim: int, hidden: Sequence[int] = (64,), out_dim: int = 10,
                 activation: str = "relu", batchnorm: bool = False):
        super().__init__()
        check_int("in_dim", in_dim, minimum=1)
        check_int("out_dim", out_dim, minimum=1)
        if activation not in self._ACTS:
            raise ValueError(f"activation must be one of {', '.join(self._ACTS)}, got {activation!r}")
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for a, b in zip(dims[:-1], dims[1:]):
            check_int("hidden size", b, minimum=1)
            layers.append(nn.Linear(a, b))
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(self._ACTS[activation]())
        layers.append(nn.Linear(dims[-1], out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in_dim) -> (N, out_dim)
        return self.net(x)
