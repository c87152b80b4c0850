"""``lab.rewards``: reward shaping and multi-objective weighting (catalog kind ``reward``).

The KL penalty in the reward (fixed and adaptive β), multi-label rewards, hypervolume- and
gradient-based dynamic weighting, RECAP, the Preference Orchestrator's prompt-aware weights,
constrained RLHF with Lagrange multipliers and RL-Struct's structured-output reward. Each maps
rewards (or objectives) to the scalar or per-token rewards an advantage estimator takes; the
shared pieces (weighted sums, Pareto fronts, hypervolume) live in :mod:`lab.rewards.multi_objective`.
``policy_optimization(reward_shaping=...)`` applies one by spec::

    from lab.registry import make
    shaping = make("reward", "kl_penalty(beta=0.1)")
"""
