"""No silent failure, for every lab optimizer: non-finite gradients, non-finite hyperparameters,
complex parameters, frozen parameters, half precision."""
from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from torch import nn

from lab.optim._common import NonFiniteGradientError
from lab.registry import available, get, make

TORCH_BASELINES = {"sgd", "adam", "adamw"}  # torch.optim's own classes, registered for comparison
LAB = [n for n in available("optimizer") if n not in TORCH_BASELINES]
GRADIENT_FREE = {n for n in LAB if getattr(get("optimizer", n), "requires_fitness", False)}
GRADIENT = [n for n in LAB if n not in GRADIENT_FREE]
SETTINGS = {"badam": dict(freeze_inactive=False, switch_block_every=2),
            "galore": dict(rank=2), "fira": dict(rank=2), "gradnorm_lorp": dict(rank=2),
            "frugal": dict(density=0.5)}


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _step(opt, model, x, poison=None):
    """One step; ``poison`` = (parameter index, value) written into that gradient after backward."""
    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        if poison is not None:
            p = list(model.parameters())[poison[0]]
            p.grad.view(-1)[1] = poison[1]
        return loss

    if getattr(opt, "requires_closure", False):
        return opt.step(closure)
    closure()
    return opt.step()


def _assert_same(a, b):
    """Nested state dicts equal: tensors bit for bit, everything else by ``==``."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


# ---- non-finite gradients -------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name", GRADIENT)
def test_non_finite_gradient_raises_naming_the_parameter_and_changes_nothing(name, bad):
    # Prepare: two good steps, then a snapshot
    model = _model()
    opt = make("optimizer", name, model.named_parameters(), lr=1e-2, **SETTINGS.get(name, {}))
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _step(opt, model, x)
    _step(opt, model, x)
    params = copy.deepcopy([p.detach() for p in model.parameters()])
    state = copy.deepcopy(opt.state_dict())
    # Execute: the gradient of the last layer's weight (index 2, "2.weight") holds NaN / Inf
    with pytest.raises(ValueError, match=r"'2\.weight'.*(NaN|Inf)") as info:
        _step(opt, model, x, poison=(2, bad))
    # Assert: a ValueError subclass named for what it is; parameters and state untouched
    assert isinstance(info.value, NonFiniteGradientError)
    assert "check_finite=False" in str(info.value)
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p.detach(), q)
    _assert_same(opt.state_dict(), state)
    _step(opt, model, x)  # a finite batch afterwards trains on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_parameters_without_names_are_named_by_group_index_and_shape():
    w = torch.ones(3, 2, requires_grad=True)
    opt = make("optimizer", "lion", [torch.ones(2, requires_grad=True), w])
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    w.grad[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"parameter 1 of param group 0 \(shape \(3, 2\)\)"):
        opt.step()


@pytest.mark.parametrize("name", ["lion", "signsgd", "lion_kappa"])
def test_without_the_check_a_nan_freezes_sign_methods_for_ever(name):
    # The failure the check exists for: sign(NaN) = 0, and the NaN stays in the momentum
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    kwargs = {"momentum": 0.9} if name == "signsgd" else {}
    opt = make("optimizer", name, [p], lr=0.1, check_finite=False, **kwargs)
    p.grad = torch.tensor([math.nan, 1.0, 1.0], dtype=torch.float64)
    opt.step()
    for _ in range(5):
        p.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
    assert p[0].item() == 0.0 and p[1].item() < -0.5   # coordinate 0 never moves again
    with pytest.raises(ValueError, match="NaN"):
        checked = make("optimizer", name, [p], lr=0.1, **kwargs)
        p.grad = torch.tensor([math.nan, 1.0, 1.0], dtype=torch.float64)
        checked.step()


@pytest.mark.parametrize("grad", [[3e38, 3e38, 3e38, 3e38], [3e38, 3e38, -3e38, -3e38]],
                         ids=["same-sign", "mixed-sign"])
def test_a_finite_gradient_whose_sum_overflows_is_not_reported(grad):
    # 4 x 3e38 overflows float32 (max 3.4e38): the quick per-tensor sum is inf (or inf - inf =
    # NaN, by summation order), the exact per-tensor check says finite, so the step goes on
    p = torch.zeros(4, requires_grad=True)
    opt = make("optimizer", "lion", [p], lr=0.1)
    p.grad = torch.tensor(grad)
    assert not torch.isfinite(p.grad.sum())
    opt.step()
    assert torch.equal(p.detach(), -0.1 * torch.tensor(grad).sign())


# ---- hyperparameters ------------------------------------------------------------------------
def _float_arguments(name):
    """Constructor arguments whose default is a float or a pair of floats."""
    out = []
    for arg, param in inspect.signature(get("optimizer", name)).parameters.items():
        default = param.default
        if isinstance(default, float) or (isinstance(default, tuple) and default
                                          and all(isinstance(v, float) for v in default)):
            out.append((arg, default))
    return out


FLOAT_ARGS = [(n, a, d) for n in LAB for a, d in _float_arguments(n)]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name,arg,default", FLOAT_ARGS, ids=[f"{n}-{a}" for n, a, _ in FLOAT_ARGS])
def test_non_finite_hyperparameter_raises_naming_it(name, arg, default, bad):
    value = (bad, default[1]) if isinstance(default, tuple) else bad
    with pytest.raises(ValueError, match=arg):
        make("optimizer", name, [nn.Parameter(torch.ones(3, 2))], **{arg: value})


@pytest.mark.parametrize("name", ["sam", "wsam", "es", "eggroll"])
@pytest.mark.parametrize("arg", ["lr", "weight_decay"])
@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_wrappers_check_the_numbers_they_hand_to_the_base_optimizer(name, arg, bad):
    # torch.optim.SGD accepts lr=nan (nan < 0 is False) and writes NaN into every weight
    with pytest.raises(ValueError, match=arg):
        make("optimizer", name, [nn.Parameter(torch.ones(3, 2))], **{arg: bad})
    with pytest.raises(ValueError, match="momentum"):
        make("optimizer", name, [nn.Parameter(torch.ones(3, 2))], base_kwargs={"momentum": bad})


# ---- complex parameters ---------------------------------------------------------------------
@pytest.mark.parametrize("name", LAB)
def test_complex_parameters_are_rejected_with_a_type_error(name):
    z = nn.Parameter(torch.randn(3, 2, dtype=torch.complex128))
    with pytest.raises(TypeError, match="complex"):
        opt = make("optimizer", name, [z], **SETTINGS.get(name, {}))
        z.grad = torch.randn(3, 2, dtype=torch.complex128)
        if getattr(opt, "requires_closure", False):
            opt.step(lambda: z.abs().sum())
        else:
            opt.step()


# ---- BAdam and frozen parameters ------------------------------------------------------------
@pytest.mark.parametrize("freeze_inactive", [True, False])
def test_badam_never_trains_or_unfreezes_a_frozen_parameter(freeze_inactive):
    # Prepare: the user freezes the first layer's bias; 4 blocks (one per tensor), K = 2
    model = _model()
    frozen = model[0].bias
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    opt = make("optimizer", "badam", model.parameters(), lr=0.1, switch_block_every=2,
               freeze_inactive=freeze_inactive)
    x = torch.randn(5, 4, dtype=torch.float64)
    # Execute: two full passes over the blocks, a gradient forced onto the frozen bias each step
    for _ in range(16):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        frozen.grad = torch.ones_like(frozen)
        opt.step()
        assert not frozen.requires_grad
    # Assert
    assert torch.equal(frozen.detach(), before)
    assert frozen not in opt.state or not opt.state[frozen]
    assert not torch.equal(model[0].weight.detach(), _model()[0].weight.detach())  # others train


# ---- half precision -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["frugal", "fira", "galore", "gradnorm_lorp", "badam"])
def test_float16_first_steps_are_finite_and_follow_the_float32_run(name):
    # In float16, eps = 1e-8 rounds to 0: a zero gradient coordinate gave 0/0 on the first step
    gen = torch.Generator().manual_seed(3)
    w32 = torch.randn(8, 6, generator=gen) * 0.5
    grads = [torch.randn(8, 6, generator=gen) * 1e-2 for _ in range(3)]
    for g in grads:
        g[:, 0] = 0.0                                    # a column without gradient
    kwargs = dict(lr=1e-2, **SETTINGS.get(name, {}))
    if name == "badam":
        kwargs["freeze_inactive"] = False
    runs = {}
    for dtype in (torch.float16, torch.float32):
        w = nn.Parameter(w32.to(dtype, copy=True))
        opt = make("optimizer", name, [w], **kwargs)
        for g in grads:
            w.grad = g.to(dtype)
            opt.step()
        runs[dtype] = w.detach().float()
    assert torch.isfinite(runs[torch.float16]).all()
    moved = (runs[torch.float32] - w32).abs().max()
    assert moved > 1e-3
    assert (runs[torch.float16] - runs[torch.float32]).abs().max() < 0.05 * moved + 2e-3
