"""Mixture-of-Experts routing and load balancing.

- :class:`TopKRouter` (``lab.moe.router``): indices, gate weights, router logits, per-expert load
  and the auxiliary loss (zero for loss-free balancers); DeepSeek-V3's group-limited routing
  (``n_group``, ``topk_group``) and ``routed_scaling_factor``.
- :class:`MoELayer` (``lab.moe.layer``): small MLP experts, optional capacity factor with token
  dropping, dispatch by grouped GEMM or padded ``bmm`` (the Python loop over experts is the
  reference).
- Balancers (registry kind ``balancer``): ``switch_aux``, ``z_loss``, ``seq_aux`` (losses);
  ``aux_free_bias``, ``stochastic_balance`` (bias controllers with ``update(load)``).
- ``lab.moe.metrics``: max violation, idle experts, load entropy, dropped tokens, the interference
  gradient, gate distortion against an unbalanced twin, the Lagrangian of the primal-dual view.
- ``lab.moe.transformer``: a tiny MoE transformer language model (aux loss pooled over layers as
  Hugging Face pools it).
- ``lab.moe.hf``: ``attach(model, balancer)`` for Hugging Face Mixtral, Qwen2-MoE, Qwen3-MoE and
  DeepSeek-V3 models (imported on its own: ``from lab.moe.hf import attach``).
"""
from lab.moe.aux_free import AuxFreeBias  # noqa: F401
from lab.moe.layer import MoELayer, capacity_keep, expert_capacity  # noqa: F401
from lab.moe.metrics import expert_load  # noqa: F401
from lab.moe.router import RouterOutput, TopKRouter, is_controller, select_topk  # noqa: F401
from lab.moe.seq_aux import SeqAux  # noqa: F401
from lab.moe.stochastic_balance import StochasticBalance  # noqa: F401
from lab.moe.switch_aux import SwitchAux  # noqa: F401
from lab.moe.z_loss import ZLoss  # noqa: F401

