"""lab.federated: federated learning on simulated clients.

Parameters are flat vectors; an update is ``Delta = x_after - x_before``. A problem
(``toy_envs.federated``) gives each client its data, a participation model (kind
``participation``) decides who takes part, an algorithm (kind ``aggregator``) trains on the
clients (``local_update``/``local_updates``) and merges their updates (``aggregate``), and
:func:`simulate` runs the rounds and records a ``History``. ``lab.federated.flower`` wraps any
algorithm as a Flower ``Strategy`` (needs the ``flower`` extra).
"""
from lab.federated.admm import RobustADMM
from lab.federated.async_inversion import AsyncInversion
from lab.federated.base import Aggregator, LocalResult, local_sgd, stack_updates, weighted_step
from lab.federated.fedau import FedAU, IntervalEstimator
from lab.federated.fedavg import FedAvg, fedavg_weights
from lab.federated.fedstale import FedStale, fedstale_step
from lab.federated.fedvarp import FedVARP, fedvarp_step
from lab.federated.knowledge_fusion import KnowledgeFusion
from lab.federated.momentum import FedAvgM, ScaffoldM
from lab.federated.scaffold import Scaffold
from lab.federated.participation import (
    Bernoulli, Cyclic, Markov, Participation, Stragglers, Uniform, heterogeneous_rates, make_participation,
)
from lab.federated.simulate import Faults, simulate

__all__ = [
    "FedAvg", "FedAvgM", "Scaffold", "ScaffoldM", "FedVARP", "FedStale", "FedAU", "RobustADMM", "AsyncInversion",
    "KnowledgeFusion", "IntervalEstimator", "fedavg_weights", "fedstale_step", "fedvarp_step",
    "Aggregator", "LocalResult", "local_sgd", "stack_updates", "weighted_step",
    "Participation", "Bernoulli", "Cyclic", "Markov", "Stragglers", "Uniform",
    "heterogeneous_rates", "make_participation", "Faults", "simulate",
]
