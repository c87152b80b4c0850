"""TopKRouter: selection, gates, load, the balancer contract, and clear errors."""
import pytest
import torch

from lab.moe import AuxFreeBias, SwitchAux, TopKRouter, select_topk
from lab.moe.metrics import expert_load


def _router(balancer=None, **kw):
    r = TopKRouter(2, 4, 2, balancer, **kw)
    with torch.no_grad():  # logits = x @ W^T with W rows the 4 experts' directions
        r.gate.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    return r


def test_hand_checked_selection_gates_and_load():
    # Prepare: logits of token 0 = [2, 1, -2, -1]; token 1 = [-1, 0, 1, 0]
    x = torch.tensor([[2.0, 1.0], [-1.0, 0.0]])
    # Execute
    out = _router()(x)
    # Assert: top-2 by softmax, gates renormalized over the two chosen experts
    assert out.indices[0].tolist() == [0, 1]
    assert out.indices[1, 0].item() == 2
    p = torch.softmax(torch.tensor([2.0, 1.0, -2.0, -1.0]), 0)
    assert out.gates[0].tolist() == pytest.approx([(p[0] / (p[0] + p[1])).item(), (p[1] / (p[0] + p[1])).item()])
    assert out.load.sum().item() == 4 and out.load[0].item() == 1 and out.load[2].item() == 1
    assert out.aux_loss.item() == 0.0


def test_k1_keeps_raw_probability_as_gate():
    r = TopKRouter(2, 4, 1)
    x = torch.randn(5, 2)
    out = r(x)
    assert torch.allclose(out.gates.squeeze(-1), out.scores.max(-1).values)


def test_leading_shape_is_kept_and_loss_balancer_is_called():
    r = TopKRouter(3, 4, 2, SwitchAux(4))
    out = r(torch.randn(2, 5, 3))
    assert out.indices.shape == (2, 5, 2) and out.logits.shape == (2, 5, 4)
    assert out.aux_loss.item() > 0 and out.aux_loss.requires_grad


def test_bias_changes_selection_but_gates_come_from_unbiased_scores():
    bal = AuxFreeBias(4)
    bal.bias = torch.tensor([0.0, -1.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    out = _router(bal)(x)
    plain = _router()(x)
    assert not torch.equal(out.indices, plain.indices)  # the bias moved tokens
    expected = out.scores.gather(-1, out.indices)
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.equal(out.gates, expected)  # exactly the unbiased scores of the chosen experts
    same = (out.indices == plain.indices).all(-1)
    assert same.any() and torch.equal(out.gates[same], plain.gates[same])
    assert out.aux_loss.item() == 0.0


def test_select_topk_matches_loop_reference():
    scores = torch.rand(20, 6, generator=torch.Generator().manual_seed(1))
    idx, gates = select_topk(scores, 3)
    for t in range(20):
        order = sorted(range(6), key=lambda i: -scores[t, i].item())[:3]
        assert idx[t].tolist() == order
        assert gates[t].sum().item() == pytest.approx(1.0)


def test_expert_load_counts_slots():
    assert expert_load(torch.tensor([[0, 1], [0, 3]]), 4).tolist() == [2.0, 1.0, 0.0, 1.0]


def test_errors_are_clear():
    with pytest.raises(ValueError, match="k must be <= n_experts"):
        TopKRouter(4, 3, 4)
    with pytest.raises(ValueError, match="k must be <= n_experts"):
        select_topk(torch.rand(2, 3), 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        TopKRouter(4, 3, 0)
    r = TopKRouter(4, 3, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        r(torch.randn(5, 3))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        r(torch.ones(5, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        r.route(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="router_logits must have shape"):
        r.route(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="balancer"):
        TopKRouter(4, 3, 2, balancer="switch_aux")
    with pytest.raises(ValueError, match="experts"):
        TopKRouter(4, 3, 2, balancer=SwitchAux(5))
    with pytest.raises(ValueError, match="score_fn"):
        TopKRouter(4, 3, 2, score_fn="relu")
