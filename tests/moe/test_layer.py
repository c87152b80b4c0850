"""MoELayer: dispatch equals a per-token reference, capacity drops exactly the overflow."""
import math

import pytest
import torch

from lab.moe import MoELayer, capacity_keep, expert_capacity
from lab.moe.metrics import dropped_fraction


def test_capacity_formula():
    assert expert_capacity(10, 4, 2, 1.0) == 5  # ceil(1.0 * 2 * 10 / 4)
    assert expert_capacity(10, 4, 1, 1.25) == math.ceil(3.125)


def test_capacity_keep_hand_checked_sequence_order():
    # expert 0 is asked by tokens 0, 1, 3, 4; capacity 2 keeps the first two in sequence order
    keep = capacity_keep(torch.tensor([[0], [0], [1], [0], [0], [1]]), 2, 2)
    assert keep.squeeze(-1).tolist() == [True, True, True, False, False, True]


def test_capacity_keep_first_choices_before_second_choices():
    # queue of expert 0: (t0, slot0), (t2, slot0), (t1, slot1) -> the second choice of t1 is dropped
    # queue of expert 1: (t1, slot0), (t0, slot1), (t2, slot1) -> the second choice of t2 is dropped
    indices = torch.tensor([[0, 1], [1, 0], [0, 1]])
    assert capacity_keep(indices, 2, 2).tolist() == [[True, True], [True, False], [True, False]]


def test_capacity_keep_batch_prioritized_by_score():
    indices = torch.tensor([[0, 1], [1, 0], [0, 1]])
    keep = capacity_keep(indices, 2, 2, "score", top1_scores=torch.tensor([0.1, 0.9, 0.5]))
    # token order t1, t2, t0: the low-confidence token t0 loses its second choice
    assert keep.tolist() == [[True, False], [True, False], [True, True]]
    with pytest.raises(ValueError, match="top1_scores"):
        capacity_keep(indices, 2, 2, "score")


def test_layer_matches_per_token_reference():
    g = torch.Generator().manual_seed(0)
    layer = MoELayer(6, 4, 2, d_hidden=5)
    x = torch.randn(2, 7, 6, generator=g)
    y, route = layer(x)
    flat, idx, gates = x.reshape(-1, 6), route.indices.reshape(-1, 2), route.gates.reshape(-1, 2)
    ref = torch.stack([sum(gates[t, j] * layer.expert(int(idx[t, j]), flat[t:t + 1])[0] for j in range(2))
                       for t in range(flat.shape[0])])
    assert torch.allclose(y.reshape(-1, 6), ref, atol=1e-6)
    assert not route.dropped.any()
    y.sum().backward()
    assert layer.router.gate.weight.grad.abs().sum() > 0  # the router learns through the gates
    assert layer.w1.grad.abs().sum() > 0


def test_capacity_overflow_drops_exactly_the_tokens_beyond_capacity():
    # Prepare: every token prefers expert 0 (k = 1, E = 4, T = 8, CF = 1 -> C = 2)
    layer = MoELayer(3, 4, 1, capacity_factor=1.0)
    with torch.no_grad():
        layer.router.gate.weight.zero_()
        layer.router.gate.weight[0, 0] = 5.0
    x = torch.rand(8, 3, generator=torch.Generator().manual_seed(0)) + torch.tensor([1.0, 0.0, 0.0])
    # Execute
    y, route = layer(x)
    # Assert: tokens 0 and 1 keep their slot, tokens 2..7 are dropped and output exactly 0
    assert (route.indices == 0).all()
    assert route.dropped.squeeze(-1).tolist() == [False, False] + [True] * 6
    assert (y[2:] == 0).all() and (y[:2] != 0).any()
    assert dropped_fraction(route.dropped) == pytest.approx(6 / 8)
    assert route.load[0].item() == 8  # the load counts demand, before dropping


def test_drop_rate_falls_as_capacity_factor_rises():
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1)) + 2.0  # skewed routing
    rates = []
    for cf in (0.5, 1.0, 2.0, 8.0):
        layer = MoELayer(8, 4, 2, capacity_factor=cf)
        with torch.no_grad():
            layer.router.gate.weight.copy_(torch.linspace(-1, 1, 32).reshape(4, 8))
        rates.append(dropped_fraction(layer(x)[1].dropped))
    assert rates == sorted(rates, reverse=True) and rates[0] > 0.4 and rates[-1] == 0.0


def test_layer_errors():
    with pytest.raises(ValueError, match="k must be <= n_experts"):
        MoELayer(4, 2, 3)
    with pytest.raises(ValueError, match="capacity_factor"):
        MoELayer(4, 2, 1, capacity_factor=0.0)
    with pytest.raises(ValueError, match="priority"):
        MoELayer(4, 2, 1, priority="random")
    with pytest.raises(ValueError, match="x must have shape"):
        MoELayer(4, 2, 1)(torch.randn(3, 5))


def _grads(layer, x, impl, upstream):
    layer.impl = impl
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    y, route = layer(x)
    y.backward(upstream)
    return y.detach(), [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()], route


@pytest.mark.parametrize("dtype,impl,tol", [(torch.float32, "grouped_mm", 1e-6), (torch.float32, "bmm", 1e-6),
                                            (torch.float64, "bmm", 1e-12), (torch.float32, "auto", 1e-6)])
@pytest.mark.parametrize("capacity_factor", [None, 0.75])
def test_fast_dispatch_equals_the_loop_reference(dtype, impl, tol, capacity_factor):
    # Prepare: skewed routing (some experts empty, some overflowing) and random upstream gradients
    g = torch.Generator().manual_seed(0)
    layer = MoELayer(8, 6, 2, d_hidden=12, capacity_factor=capacity_factor).to(dtype)
    with torch.no_grad():
        layer.router.gate.weight.normal_(0.0, 2.0, generator=g)
        layer.router.gate.weight[5] = -10.0  # x > 0 below: expert 5 is never chosen
        layer.b1.normal_(generator=g)
        layer.b2.normal_(generator=g)
    x = torch.randn(3, 11, 8, generator=g, dtype=dtype).abs()
    upstream = torch.randn(3, 11, 8, generator=g, dtype=dtype)
    # Execute
    y_ref, g_ref, route = _grads(layer, x, "loop", upstream)
    y, grads, _ = _grads(layer, x, impl, upstream)
    # Assert: same outputs and same gradients for every parameter (router included) and for x
    assert route.load[5] == 0  # an expert without tokens
    if capacity_factor is not None:
        assert route.dropped.any()
    assert (y - y_ref).abs().max() <= tol * max(1.0, y_ref.abs().max())
    for a, b in zip(grads, g_ref):
        assert (a - b).abs().max() <= tol * max(1.0, b.abs().max())
    assert grads[0].abs().sum() > 0  # the router weight learns through the gates


def test_auto_picks_grouped_mm_where_usable_and_bmm_otherwise():
    from lab.moe.layer import grouped_mm_usable

    layer = MoELayer(8, 4, 2, d_hidden=12)
    x = torch.randn(5, 8)
    has = hasattr(torch.nn.functional, "grouped_mm") and grouped_mm_usable(x, layer.w1)
    assert layer.resolved_impl(x) == ("grouped_mm" if has else "bmm")
    assert layer.double().resolved_impl(x.double()) == "bmm"  # no float64 grouped GEMM
    assert MoELayer(6, 4, 2, d_hidden=5).resolved_impl(torch.randn(3, 6)) == "bmm"  # rows not 16-byte multiples
    with pytest.raises(ValueError, match="impl"):
        MoELayer(8, 4, 2, impl="triton")


@pytest.mark.parametrize("impl", ["loop", "grouped_mm", "bmm"])
def test_no_token_and_all_dropped_give_zero_output(impl):
    layer = MoELayer(8, 4, 1, impl=impl, capacity_factor=1e-9)  # C = ceil(tiny) = 1 per expert
    y, route = layer(torch.zeros(0, 8))
    assert y.shape == (0, 8) and route.load.sum() == 0
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(1))
    y, route = layer(x)
    kept = ~route.dropped.squeeze(-1)
    assert kept.sum() <= 4 and (y[~kept] == 0).all() and (y[kept] != 0).any()


def test_expert_capacity_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_tokens"):
        expert_capacity(-5, 4, 2, 1.0)
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(5, 4, 2, float("nan"))
    with pytest.raises(ValueError, match="n_experts"):
        expert_capacity(5, 0, 2, 1.0)
    with pytest.raises(ValueError, match="indices must lie"):
        capacity_keep(torch.tensor([[5]]), 2, 1)
    with pytest.raises(TypeError, match="indices must be an integer"):
        capacity_keep(torch.zeros(3, 1), 2, 1)
