"""lab.distributed: Local SGD / DiLoCo, EDiT and A-EDiT.

- the algorithms (registry kind ``distributed``): :class:`LocalSGD`, :class:`EDiT`, :class:`AEDiT`,
  rules on flat vectors (``sync(anchor, workers)``), shared by both paths below;
- K simulated workers in one process: :func:`lab.distributed.simulate.train` (vectorized);
- real processes over ``torch.distributed`` (torchrun; gloo on CPU, NCCL on GPU):
  :mod:`lab.distributed.wrappers` wraps any ``nn.Module`` and inner optimizer
  (``wrappers.LocalSGD(model, inner, sync_every=H, ...)``, ``wrappers.EDiT``, ``wrappers.AEDiT``),
  and ``python -m lab.distributed.train`` is the command line (the digits MLP, a History out).

(``lab.distributed.train`` is the command-line module; the one-process simulation's function is
``lab.distributed.simulate.train``.)
"""
from lab.distributed.a_edit import AEDiT
from lab.distributed.core import (
    EWMADetector, OuterSGD, clip_pseudo_grad, distributed_sync, norm_weights, pseudo_gradients,
)
from lab.distributed.edit import EDiT
from lab.distributed.local_sgd import LocalSGD
from lab.distributed.simulate import Problem, make_problem

__all__ = ["LocalSGD", "EDiT", "AEDiT", "OuterSGD", "EWMADetector", "clip_pseudo_grad", "norm_weights",
           "pseudo_gradients", "distributed_sync", "Problem", "make_problem"]
