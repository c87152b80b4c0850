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
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    out = r(x)
    assert torch.equal(out.gates.squeeze(-1), out.scores.max(-1).values)
    assert (out.gates < 1).all()  # not renormalized to 1 (that would pass no gradient to the router)


def test_leading_shape_is_kept_and_loss_balancer_is_called():
    r = TopKRouter(3, 4, 2, SwitchAux(4))
    out = r(torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0)))
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


def test_group_limited_routing_hand_checked():
    # Prepare: E = 6 in G = 3 groups {0,1} {2,3} {4,5}; one token's scores
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.45, 0.3, 0.2]])
    # Execute: keep the best group by its top-2 sum (1.0 > 0.95 > 0.5), then top-2 inside it
    idx, gates = select_topk(scores, 2, n_group=3, topk_group=1, routed_scaling_factor=2.5)
    plain_idx, _ = select_topk(scores, 2)
    # Assert: experts 0 and 1 (not 0 and 2), gates 2.5 * [0.9, 0.1] / 1.0
    assert idx.tolist() == [[0, 1]] and plain_idx.tolist() == [[0, 2]]
    assert gates[0].tolist() == pytest.approx([2.25, 0.25])
    # two groups kept: {0,1} and {2,3}; top-2 of their union is {0, 2}
    assert select_topk(scores, 2, n_group=3, topk_group=2)[0].tolist() == [[0, 2]]


def test_group_score_uses_the_biased_selection():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.45]])
    bias = torch.tensor([0.0, 0.0, 0.2, 0.2])  # group {2,3}: 1.35 > group {0,1}: 1.0
    idx, gates = select_topk(scores, 1, scores + bias, n_group=2, topk_group=1)
    assert idx.tolist() == [[2]]
    assert gates[0].tolist() == pytest.approx([0.5])  # k = 1: the raw, unbiased score
    # negative selection values: the other groups must be out (-inf), not merely 0 (the spec's trap)
    negative = scores + torch.tensor([-1.0, -1.0, -2.0, -2.0])  # group {0,1} wins: -1.0 > -3.05
    idx, _ = select_topk(scores, 2, negative, n_group=2, topk_group=1)
    assert sorted(idx[0].tolist()) == [0, 1]


def test_group_routing_errors():
    with pytest.raises(ValueError, match="n_group must divide"):
        TopKRouter(4, 6, 2, n_group=4)
    with pytest.raises(ValueError, match="topk_group must be <="):
        TopKRouter(4, 6, 2, n_group=3, topk_group=4)
    with pytest.raises(ValueError, match="do not fit"):
        TopKRouter(4, 6, 3, n_group=3, topk_group=1)
    with pytest.raises(ValueError, match="routed_scaling_factor"):
        TopKRouter(4, 6, 2, routed_scaling_factor=float("nan"))
    with pytest.raises(ValueError, match="selection must have the shape"):
        select_topk(torch.rand(3, 4), 2, torch.rand(3, 5))


def test_zero_tokens_route_to_empty_outputs_with_zero_loss():
    r = TopKRouter(3, 4, 2, SwitchAux(4))
    out = r(torch.zeros(0, 3))
    assert out.indices.shape == (0, 2) and out.load.tolist() == [0.0] * 4
    assert out.aux_loss.item() == 0.0 and torch.isfinite(out.aux_loss)


@pytest.mark.slow  # importing the DeepSeek-V3 modeling code dominates
@pytest.mark.parametrize("n_group,topk_group,scale", [(4, 2, 2.5), (2, 1, 1.0), (8, 3, 1.5)])
def test_group_limited_routing_matches_hugging_face_deepseek_v3(n_group, topk_group, scale):
    ds = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    from transformers import DeepseekV3Config

    cfg = DeepseekV3Config(hidden_size=8, n_routed_experts=16, num_experts_per_tok=4, n_group=n_group,
                           topk_group=topk_group, norm_topk_prob=True, routed_scaling_factor=scale)
    hf = ds.DeepseekV3TopkRouter(cfg)
    g = torch.Generator().manual_seed(n_group)
    bal = AuxFreeBias(16)
    bal.bias = 0.2 * torch.randn(16, generator=g, dtype=torch.float64)
    ours = TopKRouter(8, 16, 4, bal, score_fn="sigmoid", n_group=n_group, topk_group=topk_group,
                      routed_scaling_factor=scale)
    with torch.no_grad():
        w = torch.randn(16, 8, generator=g)
        hf.weight.copy_(w)
        ours.gate.weight.copy_(w)
        hf.e_score_correction_bias.copy_(bal.bias.float())
    x = torch.randn(200, 8, generator=g)
    _, hf_weights, hf_idx = hf(x)
    out = ours(x)
    hf_order, our_order = hf_idx.sort(-1), out.indices.sort(-1)
    ungrouped = TopKRouter(8, 16, 4, bal, score_fn="sigmoid")
    ungrouped.gate.weight.data.copy_(w)
    assert not torch.equal(ungrouped(x).indices.sort(-1).values, our_order.values)  # the groups mattered
    assert torch.equal(hf_order.values, our_order.values)  # the same experts ...
    assert torch.allclose(hf_weights.gather(-1, hf_order.indices), out.gates.gather(-1, our_order.indices),
                          rtol=0, atol=1e-6)  # ... with the same weights, scaled by rho


def test_bad_scores_selection_and_flags_are_named():
    with pytest.raises(ValueError, match="scores contains NaN"):
        select_topk(torch.tensor([[float("nan"), 0.5, 0.2]]), 1)
    with pytest.raises(ValueError, match="selection contains NaN"):
        select_topk(torch.tensor([[0.1, 0.5, 0.2]]), 1, torch.tensor([[float("nan"), 0.5, 0.2]]))
    with pytest.raises(TypeError, match="scores must be a floating-point"):
        select_topk(torch.tensor([[1, 2, 3]]), 1)
    with pytest.raises(TypeError, match="norm_topk"):
        TopKRouter(3, 4, 2, norm_topk="yes")


def test_loss_balancers_reject_repeated_or_too_many_experts_per_token():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="distinct experts"):
        SwitchAux(4).loss(logits, torch.tensor([[0, 0], [1, 2], [2, 3]]))
    with pytest.raises(ValueError, match="k <= E"):
        SwitchAux(4).loss(logits, torch.zeros(3, 5, dtype=torch.int64))
