"""aux_free_bias: the sign update, gates untouched, balance on a stream, and the primal-dual theory."""
import math

import pytest
import torch

from lab.moe import AuxFreeBias, TopKRouter
from lab.moe.aux_free import SCHEDULES, dual_step
from lab.moe.metrics import assignment_lp, lagrangian, max_violation
from lab.moe.metrics import expert_load
from toy_envs.routing import RoutingStream, gumbel_affinities, gumbel_expected_dual


def test_sign_update_moves_each_bias_by_exactly_u():
    # Prepare: loads [6, 2, 4, 4] -> L = 4: expert 0 over, 1 under, 2 and 3 on target
    bal = AuxFreeBias(4, u=1e-3)
    # Execute
    bal.update(torch.tensor([6.0, 2.0, 4.0, 4.0]))
    # Assert: p_i += u * sign(L - A_i)
    assert bal.bias.tolist() == [-1e-3, 1e-3, 0.0, 0.0]
    assert bal.n == 1


@pytest.mark.parametrize("schedule,expected", [
    ("linear", [-0.5, 0.5, 0.0, 0.0]),  # u (L - A) / L with u = 1
    ("inv_n", [-0.25, 0.25, 0.0, 0.0]),  # at n = 2: u (L - A) / (L n)
    ("inv_sqrt_n", [-0.5 / math.sqrt(2), 0.5 / math.sqrt(2), 0.0, 0.0]),
])
def test_schedules_hand_checked(schedule, expected):
    step = dual_step(torch.tensor([6.0, 2.0, 4.0, 4.0]), 2, 1.0, schedule)
    assert step.tolist() == pytest.approx(expected)


def test_update_matches_functional_core_and_state_round_trips():
    bal = AuxFreeBias(3, u=0.1, schedule="inv_n")
    loads = [torch.tensor([5.0, 1.0, 0.0]), torch.tensor([2.0, 2.0, 2.0]), torch.tensor([0.0, 3.0, 3.0])]
    expected = torch.zeros(3, dtype=torch.float64)
    for n, load in enumerate(loads, start=1):
        bal.update(load)
        expected += dual_step(load.double(), n, 0.1, "inv_n")
    assert torch.allclose(bal.bias, expected)
    other = AuxFreeBias(3, u=0.1, schedule="inv_n")
    other.load_state_dict(bal.state_dict())
    assert torch.equal(other.bias, bal.bias) and other.n == 3


def test_empty_step_changes_nothing_and_bad_input_raises():
    bal = AuxFreeBias(3)
    bal.update(torch.zeros(3))
    assert bal.n == 0 and bal.bias.abs().sum() == 0
    with pytest.raises(ValueError, match="load"):
        bal.update(torch.ones(4))
    with pytest.raises(ValueError, match="load"):
        bal.update(torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        bal.update(torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="u must be"):
        AuxFreeBias(3, u=0.0)
    with pytest.raises(ValueError, match="schedule"):
        AuxFreeBias(3, schedule="cosine")
    with pytest.raises(ValueError, match="n must be >= 1"):
        dual_step(torch.ones(3), 0, 1.0, "inv_n")  # step counts start at 1 (no division by zero)
    with pytest.raises(KeyError, match="'n'"):
        bal.load_state_dict({"bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="scores must have shape"):
        bal.selection(torch.zeros(2, 4))


def _stream_router(u, seed=0):
    stream = RoutingStream(8, 16, skew=2.0, seed=seed)
    bal = AuxFreeBias(8, u=u)
    router = TopKRouter(16, 8, 2, bal)
    with torch.no_grad():
        router.gate.weight.copy_(4.0 * stream.centroids)  # follows the skewed affinities
    return stream, bal, router


@pytest.mark.slow
@torch.no_grad()
def test_balances_a_skewed_stream_within_400_steps_and_never_touches_gates():
    # Prepare: a frozen router on a stream whose popular experts get ~2x their share
    stream, bal, router = _stream_router(u=1e-3)
    plain = TopKRouter(16, 8, 2)
    plain.gate.weight.copy_(router.gate.weight)
    g = torch.Generator().manual_seed(0)
    vio, loads = [], []
    # Execute: step budget 400 steps of 4096 tokens, u = 1e-3 (DeepSeek's speed)
    for step in range(400):
        x, _ = stream.sample(4096, step, g)
        out = router(x)
        if step % 100 == 0:  # gates are the unbiased scores of the chosen experts, bit for bit
            s = out.scores.gather(-1, out.indices)
            assert torch.equal(out.gates, s / s.sum(-1, keepdim=True))
            ref = plain(x)
            same = (ref.indices == out.indices).all(-1)
            assert torch.equal(out.gates[same], ref.gates[same])
        bal.update(out.load)
        vio.append(max_violation(out.load))
        loads.append(out.load)
    # Assert: from ~100% violation to MaxVio_global < 5% over the last 100 steps
    assert vio[0] > 0.8
    assert max_violation(torch.stack(loads[300:]).sum(0)) < 0.05
    assert sum(vio[-50:]) / 50 < 0.10  # per batch: sampling noise of ~4096 tokens remains


def _deterministic_run(schedule, u, steps=300, seed=0):
    """Fixed affinities (T=256, E=8, k=2): Lagrangian, loads and assignments per iteration."""
    e, k, t = 8, 2, 256
    mu = torch.cos(2 * math.pi * torch.arange(e, dtype=torch.float64) / e)
    gamma = gumbel_affinities(mu, t, torch.Generator().manual_seed(seed))
    bal = AuxFreeBias(e, u=u, schedule=schedule)
    f, loads, chosen = [], [], []
    for _ in range(steps):
        f.append(lagrangian(gamma, bal.bias, k))
        idx = (gamma + bal.bias).topk(k, dim=-1).indices
        load = expert_load(idx, e)
        chosen.append(torch.zeros(t, e, dtype=torch.bool).scatter(1, idx, True))
        loads.append(load)
        bal.update(load)
    return gamma, torch.tensor(f, dtype=torch.float64), torch.stack(loads), chosen


def test_lagrangian_decreases_monotonically_to_the_lp_optimum():
    gamma, f, loads, _ = _deterministic_run("linear", 0.05)
    lp = assignment_lp(gamma, 2)
    assert (f[1:] <= f[:-1] + 1e-9).all()  # monotone improvement, small constant step
    assert (f >= lp - 1e-6).all()  # weak duality: the dual function bounds the LP from above
    assert f[-1] - lp < 1e-3 * abs(lp) and f[0] - lp > 10.0
    assert max_violation(loads[-1]) < 0.05


@pytest.mark.parametrize("schedule,u", [("sign", 0.01), ("linear", 0.05), ("inv_n", 0.5), ("inv_sqrt_n", 0.1)])
def test_improvement_condition_implies_no_increase(schedule, u):
    # f is convex along the step with slope <A^n - L, L - A^n> < 0 at the start; when the next
    # violation still points the same way (<A^{n+1} - L, A^n - L> >= 0) the step cannot increase f
    _, f, loads, _ = _deterministic_run(schedule, u)
    v = loads - loads.mean(-1, keepdim=True)
    aligned = (v[1:] * v[:-1]).sum(-1) >= 0
    assert aligned[:20].all()  # far from balance the steps stay aligned ...
    assert (f[1:][aligned] <= f[:-1][aligned] + 1e-9).all()  # ... and then f never increases


def test_sign_rule_lagrangian_monotone_until_balanced():
    _, f, loads, _ = _deterministic_run("sign", 0.01)
    vio = [max_violation(a) for a in loads]
    first = next(i for i, x in enumerate(vio) if x <= 0.05)
    assert 10 < first < 250
    assert (f[1:first + 1] <= f[:first] + 1e-9).all()


@pytest.mark.parametrize("schedule", ["sign", "linear"])
def test_tokens_move_from_overloaded_to_underloaded_experts(schedule):
    _, _, loads, chosen = _deterministic_run(schedule, 0.01 if schedule == "sign" else 0.05, steps=120)
    moves = 0
    for n in range(len(chosen) - 1):
        left = chosen[n] & ~chosen[n + 1]  # (T, E) experts a token stopped using
        joined = chosen[n + 1] & ~chosen[n]
        rel = loads[n] - loads[n].mean()  # A_i - L at step n
        for t in left.any(-1).nonzero().flatten().tolist():
            for i in left[t].nonzero().flatten().tolist():
                for j in joined[t].nonzero().flatten().tolist():
                    moves += 1
                    if schedule == "sign":  # never from an underloaded, never to an overloaded expert
                        assert rel[i] >= 0 >= rel[j] and rel[i] != rel[j]
                    else:  # from a more loaded to a less loaded expert
                        assert rel[i] > rel[j]
    assert moves > 50
    over = loads[0] > loads[0].mean()
    assert loads[-1][over].sum() < loads[0][over].sum()  # the overloaded experts shed tokens


def _online_regret(schedule, u, steps, runs=8, t=32, seed=0):
    """Expected-dual regret of `runs` independent online runs (k = 1, Gumbel affinities)."""
    mu = torch.tensor([1.5, 0.5, 0.0, -0.5], dtype=torch.float64)
    e = mu.numel()
    g = torch.Generator().manual_seed(seed)
    f_star = gumbel_expected_dual(-mu, mu, t)
    p = torch.zeros(runs, e, dtype=torch.float64)
    regret = torch.zeros(runs, dtype=torch.float64)
    curve = []
    for n in range(1, steps + 1):
        regret += t * (torch.logsumexp(mu + p, -1) + 0.5772156649015329) - t / e * p.sum(-1) - f_star
        curve.append(regret.mean().item())
        gamma = mu - torch.log(-torch.log(torch.rand(runs, t, e, generator=g, dtype=torch.float64)))
        load = torch.nn.functional.one_hot((gamma + p.unsqueeze(1)).argmax(-1), e).sum(1).double()
        p += dual_step(load, n, u, schedule)
    return curve


def test_expected_dual_formula_matches_functional_core():
    mu = torch.tensor([1.5, 0.5, 0.0, -0.5], dtype=torch.float64)
    p = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
    direct = gumbel_expected_dual(p, mu, 32)
    assert direct == pytest.approx(32 * (torch.logsumexp(mu + p, 0).item() + 0.5772156649015329) - 8 * 0.2)


def test_decaying_steps_give_log_regret_constant_sign_step_linear():
    # Prepare / Execute: windows [125, 500] and [500, 2000] have equal log-length and 4x length
    decay = _online_regret("inv_n", 1.0, 2000)
    sign = _online_regret("sign", 0.05, 2000)
    inc = lambda c: (c[1999] - c[499]) / (c[499] - c[124])  # noqa: E731
    # Assert: log n regret adds about the same over each quadrupling; linear regret adds ~4x
    assert inc(decay) < 2.0
    assert inc(sign) > 3.0
    assert sign[1999] > 5 * decay[1999]


def test_schedules_listed():
    assert set(SCHEDULES) == {"sign", "linear", "inv_n", "inv_sqrt_n"}


@pytest.mark.slow  # importing the DeepSeek-V3 modeling code dominates
def test_selection_matches_hugging_face_deepseek_v3_router():
    ds = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    from transformers import DeepseekV3Config

    cfg = DeepseekV3Config(hidden_size=8, n_routed_experts=6, num_experts_per_tok=2, n_group=1, topk_group=1,
                           norm_topk_prob=True, routed_scaling_factor=1.0)
    hf = ds.DeepseekV3TopkRouter(cfg)
    g = torch.Generator().manual_seed(0)
    bal = AuxFreeBias(hf.num_experts)
    bal.bias = 0.3 * torch.randn(hf.num_experts, generator=g, dtype=torch.float64)
    ours = TopKRouter(8, hf.num_experts, 2, bal, score_fn="sigmoid")
    with torch.no_grad():
        w = torch.randn(hf.num_experts, 8, generator=g)
        hf.weight.copy_(w)
        ours.gate.weight.copy_(w)
        hf.e_score_correction_bias.copy_(bal.bias.float())
    x = torch.randn(40, 8, generator=g)
    _, hf_weights, hf_idx = hf(x)
    out = ours(x)
    hf_order, our_order = hf_idx.sort(-1), out.indices.sort(-1)
    assert not torch.equal(our_order.values, out.scores.topk(2, -1).indices.sort(-1).values)  # bias mattered
    assert torch.equal(hf_order.values, our_order.values)  # same experts chosen with the bias
    assert torch.allclose(hf_weights.gather(-1, hf_order.indices), out.gates.gather(-1, our_order.indices),
                          atol=1e-6)  # same gates, from the unbiased sigmoid scores
