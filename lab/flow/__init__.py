"""Flow matching and diffusion RL on small data (spec: federated_moe_flow.md section C).

Convention: t = 0 data, t = 1 noise, ``x_t = (1 − t)x_0 + tε``, velocity target ``ε − x_0``.

- :mod:`lab.flow.core`: the probability path, the time grid, Euler / Euler–Maruyama samplers with
  per-step Gaussian log-probs, truncated backpropagation through the sampler.
- ``flow_loss`` registry entries: ``cfm``, ``wcfm`` (:mod:`~lab.flow.cfm`), ``ddpo``, ``flow_grpo``,
  ``awm``, ``ac_flow``, ``alignprop``, ``b2_diffurl``, ``apg``, ``difficulty_curriculum``, ``diffier``
  (one module each).
- Experiments: ``flow_pretrain``, ``flow_finetune``, ``flow_guidance`` in :mod:`lab.experiments.flow`.
"""
from lab.flow.ac_flow import ac_flow_loss
from lab.flow.alignprop import alignprop_loss
from lab.flow.apg import GuidedVelocity, apg_guidance
from lab.flow.awm import awm_loss
from lab.flow.b2_diffurl import b2_diffurl_loss
from lab.flow.cfm import cfm_loss, wcfm_loss
from lab.flow.core import Trajectory, flow_path, rollout, sigmas, transition_logprobs
from lab.flow.curriculum import DifficultyCurriculum
from lab.flow.ddpo import ddpo_loss
from lab.flow.diffier import diffier_sample
from lab.flow.flow_grpo import flow_grpo_loss

__all__ = ["ac_flow_loss", "alignprop_loss", "apg_guidance", "GuidedVelocity", "awm_loss",
           "b2_diffurl_loss", "cfm_loss", "wcfm_loss", "Trajectory", "flow_path", "rollout", "sigmas",
           "transition_logprobs", "DifficultyCurriculum", "ddpo_loss", "diffier_sample", "flow_grpo_loss"]
