"""The distributed experiments and figure."""
import pytest

from lab.experiments import run
from lab.experiments.distributed import CompareDistributedConfig, compare_distributed, plot


def test_compare_runs_every_algorithm_and_plots():
    runs = compare_distributed(CompareDistributedConfig(rounds=6, workers=4))
    assert list(runs) == ["local_sgd", "edit", "a_edit"]
    for h in runs.values():
        assert len(h["loss"]) == 7 and h["loss"][-1] < h["loss"][0]
    # A-EDiT does not wait for the slow worker: 4x less wall-clock per round at slow_factor 4
    assert runs["a_edit"]["wall_clock"][-1] * 4 == runs["edit"]["wall_clock"][-1]
    assert len(plot(runs).data) >= 9


def test_spec_kwargs_win_over_config():
    # the spec's outer step overrides the config's: the same run as setting the config fields
    by_spec = run("distributed_training", algorithm="local_sgd(outer_lr=1.0, outer_momentum=0.0, nesterov=False)",
                  rounds=3)
    by_config = run("distributed_training", algorithm="local_sgd", outer_lr=1.0, outer_momentum=0.0, rounds=3)
    default = run("distributed_training", algorithm="local_sgd", rounds=3)
    assert by_spec["loss"].tolist() == by_config["loss"].tolist()
    assert by_spec["loss"].tolist() != default["loss"].tolist()


def test_bad_config():
    with pytest.raises(ValueError, match="slow_workers"):
        run("distributed_training", slow_workers=20, workers=4)
