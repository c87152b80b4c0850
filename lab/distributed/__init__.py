"""lab.distributed: Local SGD / DiLoCo, EDiT and A-EDiT on K simulated workers (one process), plus
the same outer step over ``torch.distributed`` (:func:`~lab.distributed.core.distributed_sync`)."""
from lab.distributed.a_edit import AEDiT
from lab.distributed.core import (
    EWMADetector, OuterSGD, clip_pseudo_grad, distributed_sync, norm_weights, pseudo_gradients,
)
from lab.distributed.edit import EDiT
from lab.distributed.local_sgd import LocalSGD
from lab.distributed.simulate import Problem, make_problem, train

__all__ = ["LocalSGD", "EDiT", "AEDiT", "OuterSGD", "EWMADetector", "clip_pseudo_grad", "norm_weights",
           "pseudo_gradients", "distributed_sync", "Problem", "make_problem", "train"]
