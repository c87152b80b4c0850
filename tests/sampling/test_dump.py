"""DUMP: softmax-UCB over data sources with the windowed mean |advantage| as payoff."""
import math

import pytest
import torch

from lab.registry import make
from lab.sampling.dump import DUMP, ucb_scores


def _fill(sampler: DUMP, source: int, value: float, n: int) -> None:
    sampler.update(torch.full((n,), value), torch.full((n,), source))


# ---------------------------------------------------------------- hand-computed values
def test_spec_example_scores_and_weights():
    # Prepare: L̂ = [0.5, 0.2] from n = [100, 10] samples (signs do not matter: |a|)
    d = DUMP(2)
    _fill(d, 0, -0.5, 100)
    _fill(d, 1, 0.2, 10)
    # Execute
    scores, probs = d.scores(), d.probs()
    # Assert
    assert scores.tolist() == pytest.approx([0.80538, 1.12535], abs=1e-5)
    assert probs.tolist() == pytest.approx([0.03918, 0.96082], abs=1e-5)


def test_token_advantages_use_the_masked_mean_per_sample():
    d = DUMP(2)
    adv = torch.tensor([[1.0, 3.0, 100.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    d.update(adv, torch.tensor([0, 1]), mask)
    assert d.learnability().tolist() == pytest.approx([2.0, 2.0])     # |mean(1, 3)|, |−2|
    assert d.counts.tolist() == [1, 1]


def test_window_keeps_the_last_w_samples_but_counts_all():
    d = DUMP(1, window=3)
    d.update(torch.tensor([9.0, 9.0, 1.0, 2.0, 3.0]), torch.zeros(5, dtype=torch.long))
    assert d.learnability().tolist() == pytest.approx([2.0])
    assert d.counts.tolist() == [5]


def test_unseen_source_gets_zero_learnability_and_the_full_bonus():
    d = DUMP(3)
    _fill(d, 0, 0.4, 20)
    assert d.learnability()[1:].tolist() == [0.0, 0.0]
    assert d.scores()[1].item() == pytest.approx(math.sqrt(2 * math.log(21)))


def test_limits_uniform_weights():
    # equal learnability and counts -> uniform; a huge temperature -> uniform
    d = DUMP(3)
    for j in range(3):
        _fill(d, j, 0.3, 5)
    assert d.probs().tolist() == pytest.approx([1 / 3] * 3)
    hot = DUMP(2, temperature=1e6)
    _fill(hot, 0, 1.0, 50)
    assert hot.probs().tolist() == pytest.approx([0.5, 0.5], abs=1e-5)


def test_select_draws_sources_from_the_weights_and_is_seeded():
    d = DUMP(2)
    _fill(d, 0, -0.5, 100)
    _fill(d, 1, 0.2, 10)
    ids, metrics = d.select(2000, generator=torch.Generator().manual_seed(0))
    again, _ = d.select(2000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)
    assert (ids == 1).float().mean().item() == pytest.approx(0.96082, abs=0.02)
    assert metrics["dump/weights"] == pytest.approx(d.probs().tolist())


def test_state_dict_round_trip():
    d = DUMP(3, window=4)
    d.update(torch.randn(10), torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(1)))
    e = make("sampler", "dump", 3)
    e.load_state_dict(d.state_dict())
    assert e.state_dict() == d.state_dict()
    assert torch.equal(e.probs(), d.probs())


# ---------------------------------------------------------------- behaviour
def test_sampling_shifts_to_the_source_with_the_largest_advantage_and_still_explores():
    # Prepare: three sources whose samples have mean |A| of 0.1, 0.8 and 0.3
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.1, 0.8, 0.3])
    d = DUMP(3)
    draws = torch.zeros(3)
    # Execute: 150 batches of 16 samples
    for step in range(150):
        sources, _ = d.select(16, generator=g)
        advantages = torch.randn(16, generator=g).sign() * scale[sources] * (1 + 0.2 * torch.rand(16, generator=g))
        d.update(advantages, sources)
        if step >= 100:
            draws += torch.bincount(sources, minlength=3)
    share = draws / draws.sum()
    # Assert: most of the late batches come from source 1; the others are still visited
    assert share[1] > 0.6
    assert share.argmax().item() == 1
    assert d.counts.min().item() >= 30
    assert d.probs()[1] > d.probs()[2] > d.probs()[0]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, error, match", [
    (lambda: DUMP(0), ValueError, "n_sources"),
    (lambda: DUMP(2, temperature=0.0), ValueError, "temperature"),
    (lambda: DUMP(2, window=0), ValueError, "window"),
    (lambda: DUMP(2).update(torch.ones(2), torch.tensor([0, 2])), ValueError, "source_ids"),
    (lambda: DUMP(2).update(torch.ones(2), torch.tensor([0.0, 1.0])), TypeError, "source_ids"),
    (lambda: DUMP(2).update(torch.ones(2, 3), torch.tensor([0, 1])), ValueError, "mask"),
    (lambda: DUMP(2).update(torch.tensor([1.0, float("nan")]), torch.tensor([0, 1])), ValueError, "advantages"),
    (lambda: DUMP(2).select(-1), ValueError, "n"),
    (lambda: ucb_scores(torch.ones(2), torch.ones(3)), ValueError, "counts"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bookkeeping_stays_on_the_cpu_whatever_the_default_device():
    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        sampler = DUMP(2)
        ids, m = sampler.select(3, generator=g)
        sampler.update(torch.tensor([0.5, -0.5, 1.0], device="cpu"), ids)
        sampler.load_state_dict(sampler.state_dict())
    assert ids.device.type == "cpu" and sampler.counts.device.type == "cpu"
    assert int(sampler.counts.sum()) == 3 and sampler.probs().device.type == "cpu"
