"""Gymnasium environments and toy problem generators for trainlab.

Environments are registered here under the ``toy_envs/`` namespace with a version
(``toy_envs/TokenBandit-v0``); ``gymnasium.make("toy_envs/TokenBandit-v0")`` builds one.
The table below is the one place where ids are declared; every registered env passes
``gymnasium.utils.env_checker.check_env`` (tests/test_envs.py picks new ones up automatically).
Problem generators (``surfaces``, ``federated``, ``routing``, ``preferences``, ...) are plain
modules of this package.
"""
from __future__ import annotations

import gymnasium

# (id, "module:Class", default kwargs). Add a row to register a new environment.
ENVS: list[tuple[str, str, dict]] = [
    ("toy_envs/Arithmetic-v0", "toy_envs.arithmetic:ArithmeticEnv", {}),
    ("toy_envs/MultiObjective-v0", "toy_envs.multi_objective:MultiObjectiveEnv", {}),
    ("toy_envs/StringReverse-v0", "toy_envs.strings:StringEnv", {"mode": "reverse"}),
    ("toy_envs/TokenBandit-v0", "toy_envs.token_bandit:TokenBanditEnv", {}),
    ("toy_envs/WeightedTallyingBandit-v0", "toy_envs.tallying_bandit:WeightedTallyingBanditEnv", {}),
]


def _register_all() -> None:
    for env_id, entry_point, kwargs in ENVS:
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, kwargs=kwargs)


def registered_ids() -> list[str]:
    """Ids of every environment this package registers."""
    return [env_id for env_id, _, _ in ENVS]


_register_all()
