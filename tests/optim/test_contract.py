"""The optimizer contract, table-driven over every registered optimizer.

Structural tests (state_dict round-trip, param groups, grad None, sparse gradients) run for every
optimizer in the registry; convergence tests (ill-conditioned quadratic, Rosenbrock, digits MLP,
a tiny random-weight GPT-2) run for the optimizers in ``TABLE``, which holds settings that suit
each. Two-pass optimizers (``requires_closure = True``) are stepped with a closure; gradient-free
ones (``requires_fitness = True``) are skipped where a gradient step is needed.
"""
from __future__ import annotations

import copy
import inspect
import io
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lab.experiments import run
from lab.experiments.optimizers import DIGITS_SPECS, OTHER_DIGITS_SPECS, seeded_init_
from lab.optim.projection import rank_of as project_rank
from lab.registry import available, get, make, parse_spec

F64 = torch.float64
ALL = available("optimizer")


@dataclass(frozen=True)
class Row:
    """Settings under which an optimizer is expected to do its job."""

    spec: str  # registry spec with the optimizer's own settings (lr comes from the fields below)
    quadratic: tuple[float, float]  # (lr, max final distance) after 300 steps on kappa=50
    rosenbrock: tuple[float, int, float]  # (lr, steps, max final distance)
    digits: str  # spec with its lr for the digits MLP (>= 0.85 test accuracy in 100 steps)
    gpt2_lr: float  # lr for a few steps on a tiny GPT-2


_DIGITS = {parse_spec(s)[0]: s for s in DIGITS_SPECS + OTHER_DIGITS_SPECS}
_SAM = "{}(base_kwargs={{'momentum': 0.9}}, rho={})"  # small rho: SAM's fixed point near the minimum
TABLE: dict[str, Row] = {
    "sgd": Row("sgd(momentum=0.9)", (0.01, 1e-3), (1e-3, 1000, 0.05), _DIGITS["sgd"], 0.1),
    "adam": Row("adam", (0.03, 1e-3), (0.1, 1500, 0.05), _DIGITS["adam"], 1e-2),
    # AdamW's default weight decay (0.01) moves its fixed point off (1, 1): a looser tolerance
    "adamw": Row("adamw", (0.03, 1e-3), (0.1, 1500, 0.15), _DIGITS["adamw"], 1e-2),
    "signsgd": Row("signsgd(momentum=0.9)", (0.01, 0.05), (3e-3, 2000, 0.15), _DIGITS["signsgd"],
                   1e-3),
    "adabelief": Row("adabelief(rectify=False)", (0.03, 1e-3), (0.1, 1500, 0.05),
                     _DIGITS["adabelief"], 1e-2),
    "diffgrad": Row("diffgrad", (0.1, 1e-3), (0.1, 1500, 0.05), _DIGITS["diffgrad"], 1e-2),
    "adamp": Row("adamp", (0.03, 1e-3), (0.1, 1500, 0.05), _DIGITS["adamp"], 1e-2),
    "sgdp": Row("sgdp(momentum=0.9)", (0.01, 1e-3), (1e-3, 1000, 0.05), _DIGITS["sgdp"], 0.1),
    "lion": Row("lion", (0.03, 1e-3), (3e-3, 2000, 0.15), _DIGITS["lion"], 1e-3),
    "lion_kappa": Row("lion_kappa(kappa='l2')", (0.1, 0.06), (0.01, 1500, 0.1), _DIGITS["lion_kappa"],
                      0.03),
    "agd": Row("agd(delta=1e-5)", (0.01, 1e-3), (0.03, 1500, 0.05), _DIGITS["agd"], 1e-3),
    "sam": Row(_SAM.format("sam", 0.01), (0.003, 0.01), (1e-3, 2000, 0.2), _DIGITS["sam"], 0.1),
    "wsam": Row(_SAM.format("wsam", 0.002), (0.003, 0.01), (1e-3, 2000, 0.2), _DIGITS["wsam"], 0.1),
    "galore": Row("galore", (0.03, 1e-3), (0.1, 1500, 0.05), _DIGITS["galore"], 1e-2),
    "fira": Row("fira", (0.03, 1e-3), (0.1, 1500, 0.05), _DIGITS["fira"], 1e-2),
}
TABLED = [name for name in ALL if name in TABLE]
STRUCTURE_SPECS = {"badam": "badam(freeze_inactive=False)"}
"""Settings for the structural tests of optimizers without a TABLE row (BAdam's default freezes
every block but the active one, so a plain training loop would see no gradient at all)."""


def opt_class(name):
    return get("optimizer", name)


def gradient_based(name):
    if getattr(opt_class(name), "requires_fitness", False):
        pytest.skip(f"{name} is gradient-free (step(fitness)); this test needs gradients")


def build(name, params, **overrides):
    """The optimizer with its table settings (or lr=1e-2 alone), ``overrides`` winning."""
    spec = TABLE[name].spec if name in TABLE else STRUCTURE_SPECS.get(name, name)
    base, spec_kwargs = parse_spec(spec)
    kwargs = {"lr": 1e-2, **spec_kwargs, **overrides}
    accepted = inspect.signature(opt_class(name)).parameters
    if "foreach" in accepted:
        kwargs.setdefault("foreach", None)
    try:
        return make("optimizer", base, params, **kwargs)
    except TypeError as exc:
        if name in TABLE:
            raise
        pytest.skip(f"{name} has no TABLE row and cannot be built with {kwargs}: {exc}")


def do_step(opt, closure):
    """One step: ``step(closure)`` for two-pass optimizers, else backward then ``step()``."""
    if getattr(opt, "requires_closure", False):
        return opt.step(closure)
    loss = closure()
    opt.step()
    return loss


def tiny_model(seed=0):
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(F64)
    seeded_init_(model, torch.Generator().manual_seed(seed))
    return model


def batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 4, generator=gen, dtype=F64), torch.randn(16, 3, generator=gen, dtype=F64)


def train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        x, y = batch(step)

        def closure():
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        do_step(opt, closure)


# ---------------------------------------------------------------------------------------------
# Structure: every registered optimizer

@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_mid_run_is_bit_identical(name):
    gradient_based(name)
    # Prepare: 3 steps, then checkpoint the model and the optimizer (through torch.save)
    model = tiny_model()
    opt = build(name, model.parameters(), weight_decay=0.01) if "weight_decay" in inspect.signature(
        opt_class(name)).parameters else build(name, model.parameters())
    train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    # Execute: continue the original 4 steps; restore into fresh objects and run the same 4 steps
    train(model, opt, 4, start=3)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    resumed = tiny_model(seed=99)
    resumed.load_state_dict(checkpoint["model"])
    opt2 = build(name, resumed.parameters(), weight_decay=0.01) if "weight_decay" in inspect.signature(
        opt_class(name)).parameters else build(name, resumed.parameters())
    opt2.load_state_dict(checkpoint["opt"])
    train(resumed, opt2, 4, start=3)
    # Assert
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


COUPLED_GROUPS = {"sam": "the perturbation norm is global over all groups",
                  "wsam": "the perturbation norm is global over all groups",
                  "badam": "its param groups are blocks, trained one at a time"}


@pytest.mark.parametrize("name", ALL)
def test_param_groups_behave_like_separate_optimizers(name):
    gradient_based(name)
    if name in COUPLED_GROUPS:
        pytest.skip(f"{name}: {COUPLED_GROUPS[name]}")
    # Prepare: two groups with their own lr; the same split as two optimizers
    grouped, split = tiny_model(), tiny_model()
    first, second = list(grouped[0].parameters()), list(grouped[2].parameters())
    opt = build(name, [{"params": first, "lr": 3e-3}, {"params": second}], lr=2e-2)
    opts = [build(name, list(split[0].parameters()), lr=3e-3),
            build(name, list(split[2].parameters()), lr=2e-2)]
    # Execute
    for step in range(4):
        x, y = batch(step)
        for model, optimizers in ((grouped, [opt]), (split, opts)):
            for o in optimizers:
                o.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            for o in optimizers:
                o.step()
    # Assert
    assert opt.param_groups[0]["lr"] == 3e-3 and opt.param_groups[1]["lr"] == 2e-2
    for a, b in zip(grouped.parameters(), split.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ALL)
def test_parameter_without_grad_is_skipped(name):
    gradient_based(name)
    model = tiny_model()
    unused = nn.Parameter(torch.ones(3, 2, dtype=F64))
    kwargs = {"weight_decay": 0.1} if "weight_decay" in inspect.signature(opt_class(name)).parameters else {}
    opt = build(name, [*model.parameters(), unused], **kwargs)
    train(model, opt, 3)
    assert unused.grad is None
    assert torch.equal(unused.detach(), torch.ones(3, 2, dtype=F64))   # no step, no decay
    assert not opt.state.get(unused)                                    # no state created


@pytest.mark.parametrize("name", ALL)
def test_sparse_gradient_raises_clear_error(name):
    gradient_based(name)
    emb = nn.Embedding(10, 3, sparse=True).to(F64)
    opt = build(name, emb.parameters())
    idx = torch.tensor([1, 2, 2, 5])

    def closure():
        opt.zero_grad()
        loss = emb(idx).pow(2).sum()
        loss.backward()
        return loss

    if name == "sgd":  # torch.optim.SGD has a sparse update
        before = emb.weight.detach().clone()
        do_step(opt, closure)
        assert not torch.equal(before, emb.weight.detach())
        return
    with pytest.raises((RuntimeError, ValueError, TypeError), match="(?i)sparse"):
        do_step(opt, closure)


# ---------------------------------------------------------------------------------------------
# Convergence: optimizers with settings in TABLE

MATRIX_ONLY = {"galore", "fira"}
"""Low-rank methods: on the 2-vector surfaces only their full-rank fallback (AdamW) would run, so
their convergence is tested on a matrix (test_low_rank_methods_converge_on_a_matrix_quadratic)."""


def _surface(name):
    if name in MATRIX_ONLY:
        pytest.skip(f"{name}: a 2-vector runs only the full-rank fallback; see the matrix quadratic")


@pytest.mark.parametrize("name", TABLED)
def test_converges_on_ill_conditioned_quadratic(name):
    _surface(name)
    lr, tol = TABLE[name].quadratic
    h = run("optimizer_on_surface", optimizer=TABLE[name].spec, surface="quadratic", lr=lr, steps=300)
    assert "diverged" not in h.meta
    assert h["distance"][-1] < tol
    assert h["distance"][0] > 2.0  # it really travelled (start (1.5, 1.8))


@pytest.mark.slow
@pytest.mark.parametrize("name", TABLED)
def test_converges_on_rosenbrock(name):
    _surface(name)
    lr, steps, tol = TABLE[name].rosenbrock
    h = run("optimizer_on_surface", optimizer=TABLE[name].spec, surface="rosenbrock", lr=lr,
            steps=steps)
    assert "diverged" not in h.meta
    assert h["distance"][-1] < tol


LOW_RANK = {  # spec with rank 4 of 12 columns, refresh every 10 steps; final relative distance
    "galore": ("galore(rank=4, update_proj_gap=10)", 0.02),
    "galore_lowrank_svd": ("galore(rank=4, update_proj_gap=10, svd='lowrank')", 0.02),
    "fira": ("fira(rank=4, update_proj_gap=10)", 0.02),
    "gradnorm_lorp": ("gradnorm_lorp(rank=4, update_proj_gap=10)", 0.02),
    "frugal": ("frugal(density=0.25, update_proj_gap=10, weight_decay=0.0, state_free_lr_scale=0.1)",
               0.05),  # the signSGD part keeps a small oscillation
}


@pytest.mark.parametrize("key", list(LOW_RANK))
def test_low_rank_methods_converge_on_a_matrix_quadratic(key):
    # Prepare: L(W) = 1/2 tr((W - W*) H (W - W*)^T), W 16 x 12, H with condition number 10;
    # the Adam state lives in a rank-4 subspace that must move to reach W*
    spec, tol = LOW_RANK[key]
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(16, 12, generator=gen, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=F64))
    hessian = q @ torch.diag(torch.logspace(0, -1, 12, dtype=F64)) @ q.T
    w = (0.1 * torch.randn(16, 12, generator=gen, dtype=F64)).requires_grad_(True)
    opt = make("optimizer", spec, [w], lr=0.1)
    start = float((w - target).norm())
    # Execute
    for _ in range(300):
        opt.zero_grad()
        (0.5 * ((w - target) @ hessian * (w - target)).sum()).backward()
        opt.step()
    # Assert: the low-rank path ran (a rank-4 projector) and W reached W*
    assert project_rank(opt.state[w]["projector"]) == (3 if key == "frugal" else 4)
    assert float((w - target).norm()) < tol * start


@pytest.mark.parametrize("name", TABLED)
def test_digits_mlp_reaches_target_accuracy(name):
    h = run("digits_mlp", optimizer=TABLE[name].digits, steps=100)
    assert h["test_accuracy"][-1] >= 0.85
    assert h["loss"][-10:].mean() < h["loss"][:10].mean()
    assert (h["wall_time"][1:] >= h["wall_time"][:-1]).all()


GRADIENT_FREE_DIGITS = {"es": ("es", 0.03), "eggroll": ("eggroll(sigma=0.05)", 1.0)}
"""Settings under which 30 gradient-free steps learn the digits (at the experiment's lr and
EGGROLL's default sigma 1e-3 the weights move ~1e-6 per step and the loss only drifts)."""


@pytest.mark.parametrize("name", [n for n in ALL if getattr(get("optimizer", n), "requires_fitness", False)])
def test_digits_mlp_gradient_free_path_learns(name):
    # 10 classes: chance is ~0.1; 30 steps of the estimated gradient reach > 0.45 (an update of
    # the wrong sign, or none, stays near chance and does not halve the loss's distance to 0)
    spec, lr = GRADIENT_FREE_DIGITS[name]
    h = run("digits_mlp", optimizer=spec, lr=lr, steps=30)
    assert h["test_accuracy"][0] < 0.2 and h["test_accuracy"][-1] > 0.45
    assert h["loss"][-5:].mean() < 0.8 * h["loss"][:5].mean()
    assert len(h["test_accuracy"]) == 30


@pytest.fixture(scope="module")
def gpt2_setup():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (4, 16), generator=gen)
    return model, ids


@pytest.mark.parametrize("name", TABLED)
def test_tiny_gpt2_from_config_trains(name, gpt2_setup):
    base, ids = gpt2_setup
    model = copy.deepcopy(base)
    model.train()
    opt = build(name, model.parameters(), lr=TABLE[name].gpt2_lr)
    losses = []
    for _ in range(6):

        def closure():
            opt.zero_grad()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            return loss

        losses.append(float(do_step(opt, closure).detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
