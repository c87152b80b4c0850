"""``lab.preference``: preference losses and what they teach (catalog kind ``preference_loss``).

DPO, IPO, SimPO, AlphaPO, Step-DPO, SFT and the f-divergence SFT objectives, the inverted hinge
loss for unlearning, and ranking accuracy with its idealized value. They follow the policy-loss
convention of :mod:`lab.rl` (pure functions on tensors returning ``(loss, metrics)``); the shared
pieces of every pairwise loss (pair inputs, implicit rewards, the checks) live once in
:mod:`lab.preference.core`::

    from lab.registry import make
    loss_fn = make("preference_loss", "dpo(beta=0.1)")
"""
