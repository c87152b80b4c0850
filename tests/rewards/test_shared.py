"""Hypervolume, Pareto fronts and weighted sums (lab.rewards.multi_objective)."""
import pytest
import torch

from lab.rewards.multi_objective import (hypervolume, hypervolume_contribution, pareto_front, pareto_mask,
                                    weighted_sum)


def test_hypervolume_2d_staircase_by_hand():
    # Prepare: three boxes [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1]; union = 3 + 2 + 1
    points = [[1, 3], [2, 2], [3, 1]]
    # Execute / Assert
    assert hypervolume(points, [0, 0]) == pytest.approx(6.0)
    assert hypervolume(points, [-1, -1]) == pytest.approx(4 * 2 + 3 + 2)   # strips of widths 2,1,1


def test_hypervolume_3d_by_hand():
    # three 2x1x1 boxes sharing the unit cube: 1 + 3·1 = 4
    points = [[2, 1, 1], [1, 2, 1], [1, 1, 2]]
    assert hypervolume(points, [0, 0, 0]) == pytest.approx(4.0)
    assert hypervolume([[1, 1, 1]], [0, 0, 0]) == pytest.approx(1.0)
    assert hypervolume([[3.0]], [1.0]) == pytest.approx(2.0)


def test_hypervolume_matches_monte_carlo_3d(generator):
    pts = torch.rand(6, 3, generator=generator, dtype=torch.float64)
    samples = torch.rand(200_000, 3, generator=generator, dtype=torch.float64)
    inside = (samples[:, None, :] <= pts[None]).all(-1).any(-1).double().mean()
    assert hypervolume(pts, [0, 0, 0]) == pytest.approx(float(inside), abs=5e-3)


def test_hypervolume_invariants():
    pts = [[1, 3], [2, 2], [3, 1]]
    # dominated points and duplicates add nothing; order does not matter
    assert hypervolume(pts + [[1, 1], [2, 2]], [0, 0]) == pytest.approx(6.0)
    assert hypervolume(pts[::-1], [0, 0]) == pytest.approx(6.0)
    # points not strictly above the reference count 0; an empty set has HV 0
    assert hypervolume([[1, 0], [0, 5]], [0, 0]) == 0.0
    assert hypervolume(torch.zeros(0, 2), [0, 0]) == 0.0


def test_contribution():
    assert hypervolume_contribution([2, 2], [[1, 3], [3, 1]], [0, 0]) == pytest.approx(1.0)
    assert hypervolume_contribution([1, 1], [[1, 3], [3, 1]], [0, 0]) == pytest.approx(0.0)
    assert hypervolume_contribution([1, 1], torch.zeros(0, 2), [0, 0]) == pytest.approx(1.0)


def test_pareto_front_and_mask():
    pts = torch.tensor([[1.0, 3.0], [2.0, 2.0], [1.0, 1.0], [3.0, 1.0], [2.0, 2.0]])
    assert pareto_mask(pts).tolist() == [True, True, False, True, True]
    assert pareto_front(pts).tolist() == [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]


def test_weighted_sum_by_hand():
    r = torch.tensor([[0.9, 0.2], [0.5, 0.6]])
    assert torch.allclose(weighted_sum(r, [0.5, 0.5]), torch.tensor([0.55, 0.55]))
    assert torch.allclose(weighted_sum(r, torch.tensor([[1.0, 0.0], [0.0, 1.0]])), torch.tensor([0.9, 0.6]))


@pytest.mark.parametrize("call, match", [
    (lambda: hypervolume([[1, 2, 3, 4]], [0, 0, 0, 0]), "1 to 3"),
    (lambda: hypervolume([[1, 2]], [0, 0, 0]), "reference"),
    (lambda: hypervolume([[float("nan"), 1]], [0, 0]), "points"),
    (lambda: weighted_sum(torch.ones(2, 2), [1.0]), "weights"),
    (lambda: weighted_sum(torch.ones(2, 2), [-1.0, 2.0]), "weights"),
    (lambda: weighted_sum(torch.ones(2, 2), [0.0, 0.0]), "weights"),
    (lambda: weighted_sum(torch.tensor([[float("nan"), 1.0]]), [1.0, 1.0]), "rewards"),
    (lambda: weighted_sum(torch.ones(2), [1.0]), "rewards"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors():
    with pytest.raises(TypeError, match="rewards"):
        weighted_sum([[1.0, 2.0]], [1.0, 1.0])
