"""Optimizers: ``torch.optim.Optimizer`` subclasses with the papers' defaults.

Find them by name with ``lab.registry.make("optimizer", name, params, ...)``, or import them:

- elementwise (``torch._foreach_*`` hot path): SignSGD/Signum, Lion, LionKappa, AdaBelief,
  DiffGrad, AdamP, SGDP, AGD
- two-pass (``step(closure)``): SAM, WSAM
- memory-efficient (low-rank / blockwise state): GaLore, Fira, FRUGAL, BAdam, GradNormLoRP
- gradient-free (``step(fitness)``): ES, EGGROLL
- the torch baselines: SGD, Adam, AdamW
"""
from lab.optim.adabelief import AdaBelief  # noqa: F401
from lab.optim.adamp import SGDP, AdamP  # noqa: F401
from lab.optim.agd import AGD  # noqa: F401
from lab.optim.badam import BAdam  # noqa: F401
from lab.optim.baselines import SGD, Adam, AdamW  # noqa: F401
from lab.optim.diffgrad import DiffGrad  # noqa: F401
from lab.optim.eggroll import EGGROLL  # noqa: F401
from lab.optim.es import ES  # noqa: F401
from lab.optim.fira import Fira  # noqa: F401
from lab.optim.frugal import FRUGAL  # noqa: F401
from lab.optim.galore import GaLore  # noqa: F401
from lab.optim.gradnorm_lorp import GradNormLoRP  # noqa: F401
from lab.optim.lion import Lion  # noqa: F401
from lab.optim.lion_kappa import LionKappa  # noqa: F401
from lab.optim.sam import SAM  # noqa: F401
from lab.optim.signsgd import SignSGD  # noqa: F401
from lab.optim.wsam import WSAM  # noqa: F401
