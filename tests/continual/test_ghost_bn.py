"""Ghost Batch Normalization and the regime-adaptation rule."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from lab.experiments import run
from lab.models import MLP
from lab.models.ghost_bn import GhostBatchNorm1d, ghost_batchnorm, regime_adaptation
from lab.registry import get


def test_one_ghost_batch_equals_batchnorm_outputs_and_running_stats(generator):
    x = torch.randn(16, 5, generator=generator)
    gbn, bn = GhostBatchNorm1d(5, ghost_batch_size=16), nn.BatchNorm1d(5)
    torch.testing.assert_close(gbn(x), bn(x))
    torch.testing.assert_close(gbn.running_mean, bn.running_mean)
    torch.testing.assert_close(gbn.running_var, bn.running_var)
    gbn.eval(), bn.eval()
    torch.testing.assert_close(gbn(x), bn(x))
    assert get("layer", "ghost_batchnorm") is GhostBatchNorm1d


def test_ghost_batches_equal_batchnorm_per_chunk(generator):
    # Prepare: 12 rows, ghost batch 4 -> three chunks, each normalized by its own statistics
    x = torch.randn(12, 3, generator=generator) * 3 + 1
    gbn, bn = GhostBatchNorm1d(3, ghost_batch_size=4), nn.BatchNorm1d(3)
    # Execute
    y = gbn(x)
    expected = torch.cat([bn(chunk) for chunk in x.split(4)])
    # Assert: outputs equal, running stats updated once per chunk (momentum applied 3 times)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(gbn.running_mean, bn.running_mean)
    assert int(gbn.num_batches_tracked) == 3


def test_hand_computed_two_row_ghost_batches():
    x = torch.tensor([[0.0], [2.0], [10.0], [14.0]])
    y = GhostBatchNorm1d(1, ghost_batch_size=2, eps=1e-12)(x)
    # each pair is normalized to (-1, +1) whatever its scale
    torch.testing.assert_close(y, torch.tensor([[-1.0], [1.0], [-1.0], [1.0]]))


def test_uneven_batch_is_split_into_near_equal_chunks(generator):
    # Prepare: 9 rows, ghost batch 4 -> ceil(9/4) = 3 chunks of 3 (not 4 + 4 + 1)
    x = torch.randn(9, 2, generator=generator) * 5 + 3
    gbn, bn = GhostBatchNorm1d(2, ghost_batch_size=4), nn.BatchNorm1d(2)
    # Execute
    y = gbn(x)
    # Assert: each chunk of 3 is normalised by its own statistics (mean 0, biased var 1 per feature) ...
    for chunk in y.split(3):
        torch.testing.assert_close(chunk.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(chunk.var(0, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    # ... exactly as BatchNorm applied to rows 0-2, 3-5, 6-8, with three running-stat updates
    torch.testing.assert_close(y, torch.cat([bn(chunk) for chunk in x.split(3)]))
    torch.testing.assert_close(gbn.running_var, bn.running_var)
    assert int(gbn.num_batches_tracked) == 3
    # a batch that fits one ghost batch is plain BatchNorm; eval mode uses the running statistics
    gbn.eval(), bn.eval()
    torch.testing.assert_close(gbn(x), bn(x))


def test_convert_mlp_keeps_parameters(generator):
    model = MLP(4, (8,), 2, batchnorm=True)
    before = [p.clone() for p in model.parameters()]
    ghost_batchnorm(model, 4)
    assert sum(isinstance(m, GhostBatchNorm1d) for m in model.modules()) == 1
    for a, b in zip(before, model.parameters()):
        torch.testing.assert_close(a, b)
    assert model(torch.randn(8, 4, generator=generator)).shape == (8, 2)


def test_regime_adaptation_worked_example():
    lr, epochs, milestones = regime_adaptation(0.1, 4096, 128, 10, (5, 8))
    assert lr == pytest.approx(0.1 * math.sqrt(32)) and epochs == 320 and milestones == (160, 256)
    assert regime_adaptation(0.1, 4096, 128, 10, scale_lr=False, adapt_regime=False)[:2] == (0.1, 10)


def test_regime_rounds_the_factor_up_and_the_default_ghost_batch_is_128():
    # Docstring choices: epochs and milestones times ceil(B_L / B_S) (200/128 = 1.56 -> 2, so the
    # large-batch run makes at least as many updates); lr uses the exact sqrt(1.5625) = 1.25
    lr, epochs, milestones = regime_adaptation(0.1, 200, 128, 10, (3,))
    assert lr == pytest.approx(0.125) and epochs == 20 and milestones == (6,)
    assert GhostBatchNorm1d(3).ghost_batch_size == 128


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="ghost_batch_size"):
        GhostBatchNorm1d(3, ghost_batch_size=1)
    with pytest.raises(TypeError, match="num_features"):
        GhostBatchNorm1d(3.0)
    with pytest.raises(ValueError, match="x must have shape"):
        GhostBatchNorm1d(3)(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="lr"):
        regime_adaptation(-0.1, 64, 32, 1)


@pytest.mark.slow
def test_large_batch_gap_closes_with_more_updates():
    """Same epochs: large batch has higher test error; sqrt lr + regime adaptation narrows the gap."""
    def err(**kw):
        return np.mean([run("large_batch_gap", seed=s, epochs=4, **kw).artifacts["final_test_error"]
                        for s in range(3)])
    small, large = err(batch_size=32), err()
    adapted = err(scale_lr=True, adapt_regime=True)
    assert large > small + 0.01
    assert adapted < large - 0.01
    h = run("large_batch_gap", epochs=1, batch_size=256)
    assert h.artifacts["updates"] == math.ceil(1348 / 256) and np.all(np.diff(h["distance"]) > -1.0)
