"""MoE experiments, the tiny MoE transformer and the figures."""
import dataclasses

import pytest
import torch

from lab.experiments import run
from lab.experiments.moe import BALANCERS, RoutingSimConfig, build_balancer, compare_balancers
from lab.history import Runs
from lab.moe import AuxFreeBias, SwitchAux
from lab.moe.transformer import MoETransformer
from lab.registry import available
from lab.viz.moe import balance_curves, bias_figure, load_heatmap, primal_dual_figure


def test_every_catalog_balancer_is_registered_and_buildable():
    assert set(BALANCERS) - {"none"} <= set(available("balancer"))
    assert build_balancer("none", 4, aux_coef=0.1, u=0.1, schedule="sign") is None
    sw = build_balancer("switch_aux", 4, aux_coef=0.3, u=0.1, schedule="sign")
    assert isinstance(sw, SwitchAux) and sw.coef == 0.3
    af = build_balancer("aux_free_bias(u=0.05)", 4, aux_coef=0.3, u=0.1, schedule="linear")
    assert isinstance(af, AuxFreeBias) and af.u == 0.05 and af.schedule == "linear"  # spec wins


def test_routing_sim_bias_balances_without_interference_where_the_aux_loss_bends_the_gates():
    runs = compare_balancers("moe_routing_sim", RoutingSimConfig(), ("none", "switch_aux", "aux_free_bias"))
    none, aux, free = runs["none"], runs["switch_aux"], runs["aux_free_bias"]
    tail = slice(-30, None)
    assert none["max_violation"][tail].mean() > 0.8
    assert free["max_violation"][tail].mean() < 0.5 * none["max_violation"][tail].mean()
    assert free["bias"].shape == (100, 8) and "bias" not in none
    # no balancer: the router is its own twin; the bias adds no gradient; the aux loss does
    assert (none["gate_distortion"] == 0).all() and (none["interference"] == 0).all()
    assert (free["interference"] == 0).all() and aux["interference"][tail].mean() > 0.3
    # the aux loss's gradient bends the router's scores; the bias leaves them near the twin's
    assert aux["gate_distortion"][tail].mean() > 0.1
    assert free["gate_distortion"][tail].mean() < 0.25 * aux["gate_distortion"][tail].mean()
    # the twin is trained exactly like the router minus the balancing: with a zero coefficient they coincide
    idle = run("moe_routing_sim", balancer="switch_aux", aux_coef=0.0, steps=30)
    assert (idle["gate_distortion"] == 0).all() and (idle["interference"] == 0).all()


def test_moe_hf_records_every_layers_load():
    h = run("moe_hf", arch="qwen3_moe", balancer="aux_free_bias", steps=3, batch=2, seq_len=6, n_layers=2,
            device="cpu")
    layer_load = h["layer_load"]  # (steps, layers, experts)
    assert layer_load.shape == (3, 2, 8) and (layer_load.sum(-1) == 2 * 2 * 6).all()  # k * B * S per layer
    assert (h["load"] == layer_load[:, 0]).all() and h["layer_bias"].shape == (3, 2, 8)
    assert h.meta["layers"] == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]


def test_routing_sim_aux_loss_trades_task_loss_for_balance():
    none = run("moe_routing_sim", balancer="none", steps=150)
    strong = run("moe_routing_sim", balancer="switch_aux", aux_coef=1.0, steps=150)
    tail = slice(-30, None)
    assert strong["max_violation"][tail].mean() < 0.6 * none["max_violation"][tail].mean()
    assert strong["loss"][tail].mean() > none["loss"][tail].mean()  # a worse task loss


def test_routing_sim_drift_and_capacity():
    h = run("moe_routing_sim", balancer="none", drift=0.05, steps=120, capacity_factor=1.0, lr=0.0)
    load = h["load"]
    # the popularity bump sits at expert 0 and travels drift * E / (2 pi) experts per step:
    # around step 76 it has moved 0.05 * 76 * 8 / (2 pi) = 4.8 experts, to expert 5
    assert load[:8].sum(0).argmax() == 0 and load[72:80].sum(0).argmax() == 5
    assert 0.1 < h["dropped"].mean() < 1.0


def test_primal_dual_experiment_modes():
    det = run("alf_primal_dual", mode="deterministic", schedule="linear", u=0.05, steps=200, lp_oracle=True)
    f = det["lagrangian"]
    assert f[0] - f[-1] > 5.0  # the dual function falls to the LP optimum ...
    assert (f[1:] - f[:-1]).max() < 1e-4 * abs(f[0])  # ... up to a tiny end oscillation (constant step)
    assert det.artifacts["lagrangian_final"] == pytest.approx(det.artifacts["lp_optimum"], rel=1e-3)
    online = run("alf_primal_dual")
    assert (online["regret"][1:] >= online["regret"][:-1] - 1e-9).all()  # per-step regret >= 0
    with pytest.raises(ValueError, match="mode"):
        run("alf_primal_dual", mode="stochastic")


@pytest.mark.slow
def test_moe_transformer_learns_and_bias_balances():
    none = run("moe_transformer", balancer="none")
    free = run("moe_transformer", balancer="aux_free_bias")
    assert none["loss"][-10:].mean() < none["loss"][:5].mean() - 0.3
    assert free["loss"][-10:].mean() < free["loss"][:5].mean() - 0.3
    assert free["max_violation"][-20:].mean() < 0.7 * none["max_violation"][-20:].mean()
    assert free["aux_loss"].max() == 0.0 and "bias" in free
    assert (none["interference"] == 0).all() and (free["interference"] == 0).all()


def test_moe_transformer_interference_is_the_aux_losss_share_of_the_router_gradient():
    zero = run("moe_transformer", balancer="switch_aux", aux_coef=0.0, steps=5)
    strong = run("moe_transformer", balancer="switch_aux", aux_coef=1.0, steps=5)
    assert (zero["interference"] == 0).all()  # a zero coefficient adds no gradient
    assert (strong["interference"] > 0.2).all() and (strong["interference"] < 1).all()
    twin = run("moe_transformer", balancer="switch_aux", aux_coef=1.0, steps=5, twin=True)
    assert twin["gate_distortion"][0] == 0.0 < twin["gate_distortion"][-1]  # same start, then apart


def test_transformer_module_contract():
    g = torch.Generator().manual_seed(0)
    model = MoETransformer(16, 16, 2, 2, 4, 2, max_len=8, make_balancer=lambda i: AuxFreeBias(4), generator=g)
    tokens = torch.randint(16, (3, 8), generator=g)
    logits, routes = model(tokens)
    assert logits.shape == (3, 8, 16) and len(routes) == 2 and routes[0].indices.shape == (3, 8, 2)
    stats = model.update_balancers(routes)
    assert len(stats) == 2
    b0, b1 = (blk.moe.router.balancer for blk in model.blocks)
    assert b0 is not b1  # one controller (one set of biases) per layer
    same = MoETransformer(16, 16, 2, 2, 4, 2, max_len=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same.head.weight, MoETransformer(16, 16, 2, 2, 4, 2, max_len=8,
                                                        generator=torch.Generator().manual_seed(0)).head.weight)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 9, dtype=torch.int64))
    with pytest.raises(TypeError, match="tokens"):
        model(torch.zeros(1, 4))


def test_compare_balancers_and_figures():
    runs = compare_balancers("moe_routing_sim", RoutingSimConfig(steps=20, batch=128))
    assert isinstance(runs, Runs) and list(runs) == list(BALANCERS)
    assert len(load_heatmap(runs).data) == len(BALANCERS)
    assert len(balance_curves(runs).data) >= len(BALANCERS)
    assert len(bias_figure(runs).data) == 2 * 8  # two controllers, eight experts each
    pd = Runs({s: run("alf_primal_dual", schedule=s, steps=30) for s in ("sign", "inv_n")})
    assert len(primal_dual_figure(pd).data) == 4


def test_schedule_field_lists_the_controller_schedules():
    import typing

    from lab.experiments.moe import Schedule
    from lab.moe.aux_free import SCHEDULES

    assert typing.get_args(Schedule) == SCHEDULES


MOE_EXPERIMENTS = ["moe_routing_sim", "alf_primal_dual", "moe_transformer", "moe_hf"]


@pytest.mark.parametrize("name", MOE_EXPERIMENTS)
def test_bad_config_values_are_named(name):
    from lab.experiments import config_of
    from lab.registry import get

    smoke = get("experiment", name).smoke
    floats = [f.name for f in dataclasses.fields(config_of(name)) if type(getattr(config_of(name)(), f.name)) is float]
    assert floats
    for field in floats:
        with pytest.raises(ValueError, match=field):
            run(name, **{**smoke, field: float("nan")})
    with pytest.raises(ValueError, match="seed"):
        run(name, **{**smoke, "seed": -1})
    with pytest.raises(ValueError, match="steps"):
        run(name, **{**smoke, "steps": 0})


@pytest.mark.parametrize("name", MOE_EXPERIMENTS)
def test_smoke_config_is_reproducible_by_seed(name):
    from lab.registry import get

    smoke = get("experiment", name).smoke
    a, b = run(name, **smoke, device="cpu"), run(name, **smoke, device="cpu")
    assert [row for _, row in a.rows] == [row for _, row in b.rows]
    assert run(name, **{**smoke, "seed": 1}, device="cpu").rows != a.rows
