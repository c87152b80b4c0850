"""The fused path (``fused=True``, lab.optim._fused): equal to the eager path, compiled once,
state_dict-compatible with the eager path both ways.

Compiling costs seconds per graph on a CPU, so the tensors are tiny and each case builds one
optimizer over one float32 and one float64 bucket (two graphs). The inductor cache on disk makes
reruns fast.
"""
from __future__ import annotations

import copy

import pytest
import torch

from lab.optim import _fused
from lab.registry import make

pytestmark = pytest.mark.slow  # ~2-4 s of compilation per graph on a 2-core CPU

CASES = [
    ("signsgd", {}),
    ("signsgd", dict(momentum=0.9, weight_decay=0.1, maximize=True)),
    ("lion", dict(lr=1e-2, weight_decay=0.3)),
    ("lion_kappa", dict(lr=1e-2, weight_decay=0.3, kappa="l2")),
    ("lion_kappa", dict(lr=1e-2, kappa="nuclear")),
    ("adabelief", dict(lr=1e-2, weight_decay=0.1)),
    ("adabelief", dict(lr=1e-2, weight_decay=0.1, rectify=False, amsgrad=True,
                       weight_decouple=False)),
    ("adabelief", dict(lr=1e-2, weight_decay=0.1, fixed_decay=True, degenerated_to_sgd=False)),
    ("diffgrad", dict(lr=1e-2, weight_decay=0.1)),
    ("adamp", dict(lr=1e-2, weight_decay=0.1, nesterov=True)),
    ("sgdp", dict(lr=1e-2, momentum=0.9, weight_decay=0.1)),
    ("sgdp", dict(lr=1e-2, momentum=0.9, dampening=0.1, project_momentum=True)),
    ("agd", dict(lr=1e-2, delta=1e-5, weight_decay=0.1)),
    ("agd", dict(lr=1e-2, delta=1e-2, amsgrad=True, clip=1.0, weight_decouple=False,
                 weight_decay=0.1)),
    ("agd", dict(lr=1e-2, delta=1e-2, weight_decay=0.1, win=True)),
    ("galore", dict(lr=1e-2, rank=2, update_proj_gap=3, weight_decay=0.1)),
    ("fira", dict(lr=1e-2, rank=2, update_proj_gap=3)),
    ("gradnorm_lorp", dict(lr=1e-2, rank=2, update_proj_gap=3)),
    ("frugal", dict(lr=1e-2, density=0.5, update_proj_gap=3)),
    ("badam", dict(lr=1e-2, switch_block_every=3, freeze_inactive=False)),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]


def _params(dtype, gen):
    w = torch.randn(5, 4, generator=gen, dtype=dtype)                    # a matrix
    b = torch.randn(4, generator=gen, dtype=dtype)                       # a vector
    v = torch.randn(4, 3, generator=gen, dtype=dtype)                    # rows normalized: scale-invariant
    return [t.requires_grad_(True) for t in (w, b, v)]


NO_SCALE_INVARIANT = {"gradnorm_lorp"}
"""GradNormLoRP splits W into row norms and directions; on rows the loss is invariant to, the
row-norm gradient is pure round-off (~1e-9), which its Adam normalizes to full-size steps: two
correct implementations then differ at the size of a step. Its case uses v without normalization."""


def _loss(ps, x, normalize=True):
    w, b, v = ps
    h = torch.tanh(x.to(w.dtype) @ w + b)                               # (8, 4)
    v_dir = v / v.norm(dim=1, keepdim=True) if normalize else v
    return ((h @ v_dir) ** 2).mean() + (h.sum() - 1) ** 2


def _build(name, kwargs, fused, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f32, f64 = _params(torch.float32, gen), _params(torch.float64, gen)
    opt = make("optimizer", name, f32 + f64, fused=fused, **kwargs)
    opt.normalize = name not in NO_SCALE_INVARIANT
    return opt, f32, f64


def _run(opt, f32, f64, steps, start=0):
    for step in range(start, start + steps):
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(100 + step), dtype=torch.float64)
        opt.zero_grad()
        (_loss(f32, x, opt.normalize) + _loss(f64, x, opt.normalize)).backward()
        opt.step()


def _assert_close(fast, slow, dtype):
    """Norm-wise relative error: <= 1e-6 in float32, <= 1e-12 in float64."""
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for a, b in zip(fast, slow):
        err = float((a.detach() - b.detach()).norm() / b.detach().norm().clamp_min(1e-30))
        assert err <= tol, f"{dtype}: relative error {err:.3g} > {tol}"


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_fused_equals_eager(name, kwargs):
    # Prepare: the same model and gradients for the eager and the fused optimizer
    eager, e32, e64 = _build(name, kwargs, fused=None)
    fused, f32, f64 = _build(name, kwargs, fused=True)
    # Execute
    _run(eager, e32, e64, 8)
    _run(fused, f32, f64, 8)
    # Assert: parameters and every floating state tensor agree; the step counts too
    _assert_close(f32, e32, torch.float32)
    _assert_close(f64, e64, torch.float64)
    for pe, pf in zip(e32 + e64, f32 + f64):
        for key, value in eager.state[pe].items():
            other = fused.state[pf][key]
            if key == "step":
                assert float(other) == float(value)
            elif isinstance(value, torch.Tensor) and value.is_floating_point():
                _assert_close([other], [value], pe.dtype if value.dtype == pe.dtype else value.dtype)
    assert _fused.compile_seconds(fused) > 0


@pytest.mark.parametrize("name,kwargs", [CASES[5], CASES[13]], ids=["adabelief", "agd"])
def test_state_dict_round_trips_between_eager_and_fused(name, kwargs):
    # Prepare: 3 eager steps, checkpoint
    eager, e32, e64 = _build(name, kwargs, fused=None)
    _run(eager, e32, e64, 3)
    params = copy.deepcopy([p.detach() for p in e32 + e64])
    saved = copy.deepcopy(eager.state_dict())
    # Execute: continue eagerly; resume the checkpoint in a fused optimizer, and back
    _run(eager, e32, e64, 4, start=3)
    fused, f32, f64 = _build(name, kwargs, fused=True)
    with torch.no_grad():
        for p, q in zip(f32 + f64, params):
            p.copy_(q)
    fused.load_state_dict(saved)
    _run(fused, f32, f64, 2, start=3)
    back, b32, b64 = _build(name, kwargs, fused=None)
    with torch.no_grad():
        for p, q in zip(b32 + b64, f32 + f64):
            p.copy_(q)
    back.load_state_dict(copy.deepcopy(fused.state_dict()))
    _run(back, b32, b64, 2, start=5)
    # Assert: eager -> fused -> eager ends where the eager run ends
    _assert_close(b32, e32, torch.float32)
    _assert_close(b64, e64, torch.float64)
    assert fused.param_groups[0]["fused"] is True and _fused.compile_seconds(fused) > 0
    assert back.param_groups[0]["fused"] is None and _fused.compile_seconds(back) == 0
    assert all(fused.state[p]["step"].device == p.device for p in f32 + f64)


def test_no_recompiles_after_the_first_step_even_when_lr_and_betas_change():
    # Prepare: a scheduler that changes lr and beta1 every step (OneCycleLR cycles momentum)
    opt, f32, f64 = _build("adabelief", dict(lr=1e-2, weight_decay=0.1), fused=True, seed=1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
    _run(opt, f32, f64, 1)
    sched.step()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    lrs, betas = set(), set()
    # Execute: 6 more steps with dynamo set to fail on any recompile
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(1, 7):
            lrs.add(opt.param_groups[0]["lr"])
            betas.add(opt.param_groups[0]["betas"][0])
            _run(opt, f32, f64, 1, start=step)
            sched.step()
    # Assert
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert len(lrs) == 6 and len(betas) == 6
    assert all(float(opt.state[p]["step"]) == 7 for p in f32 + f64)


def test_fused_and_foreach_together_is_an_error():
    with pytest.raises(ValueError, match="fused"):
        make("optimizer", "lion", [torch.ones(2, requires_grad=True)], fused=True, foreach=True)
    with pytest.raises(TypeError, match="fused"):
        make("optimizer", "lion", [torch.ones(2, requires_grad=True)], fused="yes")
