"""``lab.rl``: advantage estimators, policy losses, rollouts and the log-probs of causal LMs.

The catalog kinds ``advantage`` and ``policy_loss`` live here (the GRPO family included). Their
neighbours have their own packages: preference losses in :mod:`lab.preference`, samplers and
curricula in :mod:`lab.sampling`, reward shaping and multi-objective weighting in
:mod:`lab.rewards`; all follow the same convention.

Everything follows one convention (``spec/policy_losses.md``, Part F): pure functions on tensors
named ``logprobs``, ``old_logprobs``, ``advantages``, ``mask``, ``rewards`` ..., hyperparameters as
keyword arguments with the papers' defaults, each returning ``(value, metrics)``. The shared pieces
(masked statistics, token aggregation, group statistics, ratio, clipping, KL estimators) live in
:mod:`lab.rl.core`; an algorithm is a short module that composes them and is found by name::

    from lab.registry import make, available
    available("policy_loss")                    # ['dapo', 'dr_grpo', 'grpo', 'gspo', 'ppo', ...]
    loss_fn = lab.rl.make_fn("policy_loss", "grpo(beta=0.0)")
    loss, metrics = lab.rl.call_with(loss_fn, batch)
"""
from lab.rl.core import (  # noqa: F401
    AGG_MODES, KL_ESTIMATORS, STD_MODES, GlobalNorm, GroupStats, advantage_metrics, aggregate,
    as_mask, call_with, check_rewards, clipped_policy_loss, clipped_surrogate, expand_advantages,
    group_index, group_normalize, group_stats, kl, make_fn, masked_mean, masked_sum, masked_var,
    masked_whiten, policy_metrics, ratio, sequence_logprobs, wants,
)
from lab.rl.rollout import Rollout, pad_responses, rollout, token_rewards  # noqa: F401
from lab.rl.token_logprobs import logprobs, naive_logprobs  # noqa: F401
