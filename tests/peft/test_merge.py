"""MWA weights and averaging by hand; ensembles and distillation; the merging experiment."""
import pytest
import torch
from torch import nn

from lab.merge import Ensemble, average_state_dicts, distill, mwa, mwa_weights


def test_mwa_weights_hand_computed():
    # losses (1, 2), p = 1: w ∝ (1/1, 1/2) -> (2/3, 1/3)
    assert mwa_weights([1.0, 2.0], 1.0, "loss").tolist() == pytest.approx([2 / 3, 1 / 3])
    # steps (1, 3), p = 2: w ∝ (1, 9) -> (0.1, 0.9)
    assert mwa_weights([1, 3], 2.0, "step").tolist() == pytest.approx([0.1, 0.9])


def test_mwa_reduces_to_uniform_at_zero_and_to_best_at_large_penalty():
    assert mwa_weights([0.3, 1.0, 5.0], 0.0).tolist() == pytest.approx([1 / 3] * 3)
    w = mwa_weights([0.3, 1.0, 5.0], 200.0)
    assert float(w[0]) == pytest.approx(1.0) and float(w.sum()) == pytest.approx(1.0)
    assert mwa_weights([10, 20, 30], 200.0, "step").argmax() == 2


def test_average_state_dicts_and_mwa_by_hand():
    a = {"w": torch.tensor([0.0, 3.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 0.0]), "n": torch.tensor(9)}
    merged = mwa([a, b], [1.0, 2.0], penalty=1.0)               # weights (2/3, 1/3)
    assert torch.allclose(merged["w"], torch.tensor([1.0, 2.0]))
    assert int(merged["n"]) == 7                               # non-float entries from the first
    uniform = average_state_dicts([a, b], [0.5, 0.5])
    assert torch.allclose(uniform["w"], torch.tensor([1.5, 1.5]))


def test_mwa_bad_inputs():
    with pytest.raises(ValueError, match="metrics"):
        mwa_weights([1.0, 0.0])
    with pytest.raises(ValueError, match="metric"):
        mwa_weights([1.0], metric="accuracy")
    with pytest.raises(ValueError, match="penalty"):
        mwa_weights([1.0], penalty=-1.0)
    with pytest.raises(ValueError, match="metrics"):
        mwa([{"w": torch.zeros(1)}], [1.0, 2.0])
    with pytest.raises(ValueError, match="keys"):
        average_state_dicts([{"w": torch.zeros(1)}, {"v": torch.zeros(1)}], [0.5, 0.5])


class _Const(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_ensemble_averages_probabilities_by_hand():
    # member probs (0.8, 0.2) and (0.4, 0.6) -> mean (0.6, 0.4)
    m1 = _Const([0.0, float(torch.log(torch.tensor(0.25)))])
    m2 = _Const([0.0, float(torch.log(torch.tensor(1.5)))])
    out = Ensemble([m1, m2])(torch.zeros(1, 1))
    assert torch.allclose(out.exp(), torch.tensor([[0.6, 0.4]]), atol=1e-6)
    reg = Ensemble([_Const([1.0]), _Const([3.0])], task="regression")(torch.zeros(2, 1))
    assert torch.allclose(reg, torch.full((2, 1), 2.0))
    with pytest.raises(ValueError, match="members"):
        Ensemble([])
    with pytest.raises(ValueError, match="task"):
        Ensemble([m1], task="ranking")


def test_ensemble_of_independent_models_beats_a_single_one():
    from lab.experiments.peft import ensemble_comparison

    out = ensemble_comparison(n_models=4, n_train=64, steps=150, seed=0)
    assert out["ensemble_test_loss"] < min(out["single_test_losses"])


def test_distillation_moves_student_toward_ensemble():
    g = torch.Generator().manual_seed(0)
    teacher = Ensemble([_Const([2.0, 0.0, -1.0]), _Const([0.0, 1.0, 0.0])])
    student = nn.Linear(2, 3)
    losses = distill(student, teacher, torch.randn(64, 2, generator=g), steps=150, lr=0.05, generator=g)
    assert losses[-1] < 0.1 * losses[0]
    with pytest.raises(ValueError, match="steps"):
        distill(student, teacher, torch.randn(4, 2), steps=0)


def test_distillation_tempers_teacher_and_student_and_scales_by_t_squared():
    # Ensemble docstring choice: L = KL(softmax(log p_ens / T) || softmax(f_s / T)) T^2. A student
    # with zero weights outputs its bias on every input, so the first loss is batch-independent.
    teacher = Ensemble([_Const([2.0, 0.0, -1.0]), _Const([0.0, 1.0, 0.0])])
    student = nn.Linear(2, 3)
    with torch.no_grad():
        student.weight.zero_()
        student.bias.copy_(torch.tensor([0.5, 0.0, -0.5]))
    log_p = teacher(torch.zeros(1, 2))[0]
    p, q = torch.softmax(log_p / 2.0, 0), torch.softmax(torch.tensor([0.5, 0.0, -0.5]) / 2.0, 0)
    expected = float((p * (p.log() - q.log())).sum()) * 4.0
    losses = distill(student, teacher, torch.randn(8, 2), steps=1, temperature=2.0,
                     generator=torch.Generator().manual_seed(0))
    assert losses[0] == pytest.approx(expected, rel=1e-4)  # float32


def test_mwa_averages_floats_in_float64_and_keeps_integer_entries_of_the_first_state():
    # MWA docstring choice: floating tensors averaged (dtype kept), non-floating from state 0
    a = {"w": torch.tensor([1.0], dtype=torch.float16), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0], dtype=torch.float16), "n": torch.tensor(7)}
    merged = average_state_dicts([a, b], [0.25, 0.75])
    assert merged["w"].dtype == torch.float16 and float(merged["w"]) == 1.75
    assert int(merged["n"]) == 3


def test_checkpoint_averaging_beats_last_checkpoint_and_mwa_zero_is_uniform():
    import lab.experiments as E

    h = E.run("checkpoint_merging", n_models=1, ensemble_steps=1)
    a = h.artifacts
    assert a["test_loss_uniform"] < a["test_loss_last"] and a["test_loss_mwa"] < a["test_loss_last"]
    h0 = E.run("checkpoint_merging", penalty=0.0, n_models=1, ensemble_steps=1)
    assert h0.artifacts["test_loss_mwa"] == pytest.approx(h0.artifacts["test_loss_uniform"], rel=1e-6)
    assert h0.artifacts["weights"] == pytest.approx([1 / len(h0.artifacts["weights"])] * len(h0.artifacts["weights"]))
