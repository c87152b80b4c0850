"""The tallying_bandit experiment."""
import pytest

from lab.experiments import run
from lab.experiments.bandits import BanditConfig, compare_bandits


def test_compare_modified_beats_standard():
    runs = compare_bandits(BanditConfig(horizon=1500))
    assert runs["modified_se"]["cpr"][-1] < runs["standard_se"]["cpr"][-1]
    assert runs["modified_se"].artifacts["final_active"] == [runs["modified_se"].artifacts["best_arm"]]


def test_run_and_bad_config():
    h = run("tallying_bandit", horizon=400)
    assert h.steps[-1] == 400
    with pytest.raises(ValueError, match="max_memory"):
        run("tallying_bandit", max_memory=-1)
    with pytest.raises(ValueError, match="device"):
        run("tallying_bandit", device="gpu0")
