"""Balance metrics: hand-checked values and limits."""
import math

import pytest
import torch

from lab.moe.metrics import (assignment_lp, dense_gates, dropped_fraction, expert_load, gate_distortion,
                             idle_experts, interference, lagrangian, load_entropy, load_metrics, max_violation)


def test_load_metrics_hand_checked():
    load = torch.tensor([6.0, 2.0, 0.0, 0.0])  # mean 2
    assert max_violation(load) == pytest.approx(2.0)  # 6 / 2 - 1
    assert idle_experts(load) == 2
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4)
    assert load_entropy(load) == pytest.approx(h)
    assert max_violation(torch.ones(5)) == 0.0 and load_entropy(torch.ones(5)) == pytest.approx(1.0)
    assert max_violation(torch.zeros(3)) == 0.0


def test_dropped_and_dense_gates():
    assert dropped_fraction(torch.tensor([[True, False], [False, False]])) == 0.25
    idx, gates = torch.tensor([[0, 1]]), torch.tensor([[0.75, 0.25]])
    assert dense_gates(idx, gates, 3).tolist() == [[0.75, 0.25, 0.0]]


def test_gate_distortion_hand_checked():
    # Prepare: two tokens, scores of a balanced router and of its unbalanced twin
    scores = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    twin = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.2, 0.6]])
    # Execute / Assert: token 0: 1/2 (0.2 + 0.1 + 0.1) = 0.2; token 1: 0 -> mean 0.1
    assert gate_distortion(scores, twin) == pytest.approx(0.1)
    assert gate_distortion(twin, twin) == 0.0
    # sigmoid scores are normalized per token first: [0.5, 0.5] vs [0.9, 0.1] -> 1/2 (0.4 + 0.4)
    assert gate_distortion(torch.tensor([[0.2, 0.2]]), torch.tensor([[0.9, 0.1]])) == pytest.approx(0.4)
    assert gate_distortion(torch.zeros(0, 3), torch.zeros(0, 3)) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        gate_distortion(scores, twin[:1])
    with pytest.raises(ValueError, match="non-negative"):
        gate_distortion(-scores, twin)
    with pytest.raises(ValueError, match="NaN"):
        gate_distortion(torch.full((1, 3), float("nan")), twin[:1])


def test_interference_hand_checked():
    # |g_aux| = 5 (3-4-5), |g_task| = 15 -> 5 / 20
    assert interference(torch.tensor([3.0, 4.0]), torch.tensor([9.0, 12.0])) == pytest.approx(0.25)
    # several tensors (one per layer) form one vector: |(3, 4)| = 5, |(0, 0, 5)| = 5 -> 1/2
    assert interference([torch.tensor([3.0]), torch.tensor([4.0])], [torch.zeros(2), torch.tensor([5.0])]) == 0.5
    assert interference(None, torch.ones(3)) == 0.0  # no auxiliary loss: no interference
    assert interference(torch.ones(3), torch.zeros(3)) == 1.0
    assert interference(None, None) == 0.0
    with pytest.raises(ValueError, match="gradient"):
        interference(torch.tensor([float("nan")]), torch.ones(1))


def test_lagrangian_hand_checked_and_weak_duality():
    gamma = torch.tensor([[3.0, 1.0], [2.0, 0.0]], dtype=torch.float64)  # both tokens prefer expert 0
    # p = 0: sum of row maxima = 5 ; L = 1
    assert lagrangian(gamma, torch.zeros(2), 1) == pytest.approx(5.0)
    # p = (0, 1.5): token 0 stays (3 > 2.5), token 1 moves (1.5 > 2? no: 2 > 1.5) -> 3 + 2 - 1.5 = 3.5
    assert lagrangian(gamma, torch.tensor([0.0, 1.5]), 1) == pytest.approx(3.5)
    # LP optimum: balanced assignment, token 0 -> 0 and token 1 -> 1 gives 3 (or 1 + 2 = 3)
    lp = assignment_lp(gamma, 1)
    assert lp == pytest.approx(3.0)
    for p in (torch.zeros(2), torch.tensor([0.0, 1.5]), torch.tensor([-1.0, 1.0])):
        assert lagrangian(gamma, p, 1) >= lp - 1e-9


def test_expert_load_rejects_out_of_range_indices():
    assert expert_load(torch.tensor([[0, 3]]), 4).tolist() == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="indices must lie"):
        expert_load(torch.tensor([[0, 4]]), 4)  # bincount would silently return 5 counts
    with pytest.raises(ValueError, match="indices must lie"):
        expert_load(torch.tensor([[-1, 0]]), 4)
    with pytest.raises(TypeError, match="indices"):
        expert_load(torch.tensor([[0.0, 1.0]]), 4)


def test_dropped_and_dense_gates_reject_nonsense():
    with pytest.raises(TypeError, match="dropped must be a bool"):
        dropped_fraction(torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="indices must lie"):
        dense_gates(torch.tensor([[5]]), torch.tensor([[1.0]]), 3)
    with pytest.raises(ValueError, match="same shape"):
        dense_gates(torch.tensor([[0, 1]]), torch.tensor([[1.0]]), 3)


def test_metric_errors():
    with pytest.raises(ValueError, match="non-negative"):
        max_violation(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="load"):
        idle_experts(torch.ones(2, 2))
    with pytest.raises(ValueError, match="k must be"):
        lagrangian(torch.zeros(3, 2), torch.zeros(2), 3)
    with pytest.raises(ValueError, match="bias"):
        lagrangian(torch.zeros(3, 2), torch.zeros(3), 1)


def test_load_metrics_agree_with_the_single_metrics():
    for load in (torch.tensor([6.0, 2.0, 0.0, 0.0]), torch.ones(3), torch.zeros(2), torch.tensor([5.0])):
        m = load_metrics(load)
        assert m["max_violation"] == pytest.approx(max_violation(load))
        assert m["idle_experts"] == idle_experts(load)
        assert m["load_entropy"] == pytest.approx(load_entropy(load))
