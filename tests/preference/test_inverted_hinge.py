"""LoKU's inverted hinge loss: hand values, the claimed effect, retain term, edge cases."""
import math

import pytest
import torch

from lab.preference.inverted_hinge import inverted_hinge


def _logits(probs):
    return torch.log(torch.tensor(probs))[None, None]          # (1, 1, V)


def test_spec_examples():
    # p(x_t) = 0.6, runner-up 0.3 → 1 + 0.6 − 0.3 = 1.3; after unlearning 0.1 vs 0.5 → 0.6
    loss, m = inverted_hinge(_logits([0.6, 0.3, 0.1]), torch.tensor([[0]]))
    assert loss.item() == pytest.approx(1.3, abs=1e-6)
    assert m["ihl/target_prob"] == pytest.approx(0.6) and m["ihl/runner_up_prob"] == pytest.approx(0.3)
    loss, m = inverted_hinge(_logits([0.1, 0.5, 0.4]), torch.tensor([[0]]))
    assert loss.item() == pytest.approx(0.6, abs=1e-6) and m["ihl/target_top_frac"] == 0.0


def test_gradient_steps_lower_the_target_and_raise_the_runner_up():
    # Prepare: the target token (0) is the most likely; token 1 is the runner-up; token 3 a long shot
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]])).requires_grad_()
    labels = torch.tensor([[0]])
    before = torch.softmax(logits.detach(), -1)[0, 0]
    # Execute: plain gradient descent on the IHL
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(20):
        loss, _ = inverted_hinge(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = torch.softmax(logits.detach(), -1)[0, 0]
    # Assert: the target lost mass, the runner-up gained it and took the top spot; the rest is
    # barely touched (unlike gradient ascent on the NLL, which spreads mass to every token)
    assert after[0] < before[0] and after[1] > before[1]
    assert after.argmax().item() == 1
    assert abs(after[3] - before[3]) < abs(after[1] - before[1])


def test_bounded_ignore_index_mask_and_retain_term():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g) * 3
    labels = torch.randint(0, 7, (3, 5), generator=g)
    loss, _ = inverted_hinge(logits, labels)
    assert 0.0 <= loss.item() <= 2.0
    ignored = labels.clone()
    ignored[:, 2:] = -100
    masked = torch.zeros(3, 5, dtype=torch.bool)
    masked[:, :2] = True
    assert inverted_hinge(logits, ignored)[0].item() == pytest.approx(inverted_hinge(logits, labels, masked)[0].item())
    retain = torch.full((2, 3), -2.0)
    total, m = inverted_hinge(logits, labels, retain_logprobs=retain, retain_mask=torch.ones(2, 3), retain_coef=0.5)
    assert total.item() == pytest.approx(loss.item() + 0.5 * 2.0) and m["ihl/retain_nll"] == 2.0


def test_edge_cases_and_bad_input():
    all_ignored = torch.full((1, 2), -100)
    loss, m = inverted_hinge(torch.zeros(1, 2, 3, requires_grad=True), all_ignored)
    assert loss.item() == 0.0 and m["num_tokens"] == 0.0
    uniform, _ = inverted_hinge(torch.zeros(1, 1, 4), torch.tensor([[2]]))
    assert uniform.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labels"):
        inverted_hinge(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        inverted_hinge(torch.zeros(1, 2, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="labels must lie"):
        inverted_hinge(torch.zeros(1, 1, 3), torch.tensor([[5]]))
    with pytest.raises(ValueError, match="margin"):
        inverted_hinge(torch.zeros(1, 1, 3), torch.tensor([[0]]), margin=-1.0)
    with pytest.raises(ValueError, match="retain_mask"):
        inverted_hinge(torch.zeros(1, 1, 3), torch.tensor([[0]]), retain_logprobs=torch.zeros(1, 1))
    assert math.isfinite(inverted_hinge(torch.full((1, 1, 3), 1e4), torch.tensor([[0]]))[0].item())


def test_softmax_is_applied_even_to_values_inside_the_unit_interval():
    # the released helper would read (0.6, 0.3, 0.1) as probabilities (IHL 1.3); the lab reads logits
    z = torch.tensor([[[0.6, 0.3, 0.1]]])
    p = torch.softmax(z[0, 0], -1)
    loss, _ = inverted_hinge(z, torch.tensor([[0]]))
    assert loss.item() == pytest.approx(1 + p[0].item() - p[1].item(), abs=1e-6)
    assert loss.item() != pytest.approx(1.3, abs=1e-3)
