"""Every environment registered by toy_envs passes gymnasium's env checker."""
import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import toy_envs


def test_ids_are_namespaced_and_versioned():
    for env_id in toy_envs.registered_ids():
        assert env_id.startswith("toy_envs/") and "-v" in env_id, env_id
        assert env_id in gymnasium.registry


@pytest.mark.parametrize("env_id", toy_envs.registered_ids() or [None])
def test_check_env(env_id):
    if env_id is None:
        pytest.skip("no environment registered yet")
    env = gymnasium.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    env.close()
