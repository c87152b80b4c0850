"""SAM and WSAM: hand-computed steps, the two-pass contract, BatchNorm, base optimizers, errors."""
import copy

import pytest
import torch
from torch import nn

from lab.optim._common import SparseGradientError
from lab.optim.sam import SAM, frozen_batchnorm_stats
from lab.optim.wsam import WSAM
from lab.registry import make


def _half_square(x):
    """Closure of L = 1/2 ||x||^2 (the spec's worked example)."""
    def closure():
        x.grad = None
        loss = 0.5 * (x ** 2).sum()
        loss.backward()
        return loss
    return closure


def _quadratic_closure(params, A, b):
    """L = sum_j 1/2 p_j^T A p_j + b . p_j over a list of 1-D params."""
    def closure():
        for p in params:
            p.grad = None
        loss = sum(0.5 * p @ A @ p + b @ p for p in params)
        loss.backward()
        return loss
    return closure


# ---- hand-computed -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls, kwargs, expected", [
    (SAM, {}, 0.895),                                    # g=1, e=0.05, g_SAM=1.05
    (WSAM, {"gamma": 0.9}, 0.855),                       # 0.9 - 0.1 * 9 * 0.05
    (WSAM, {"gamma": 0.9, "decouple": False}, 0.855),    # grad 9*1.05 - 8*1 = 1.45
    (WSAM, {"gamma": 0.5}, 0.895),                       # alpha = 1: SAM
    (WSAM, {"gamma": 0.0}, 0.9),                         # alpha = 0: plain SGD
])
def test_spec_worked_example(cls, kwargs, expected):
    # Prepare: L = 1/2 theta^2 at theta = 1, rho 0.05, base SGD lr 0.1
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = cls([x], lr=0.1, rho=0.05, **kwargs)
    # Execute
    loss = opt.step(_half_square(x))
    # Assert: the step and the returned pass-1 loss
    assert x.item() == pytest.approx(expected, abs=1e-9)
    assert loss.item() == pytest.approx(0.5)


def test_perturbation_uses_one_norm_over_all_groups():
    # Prepare: two groups; record where pass 2 evaluates
    a = torch.tensor([3.0, 0.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([4.0], dtype=torch.float64, requires_grad=True)
    opt = SAM([{"params": [a]}, {"params": [b], "rho": 0.5}], lr=0.0, rho=0.5)
    seen = []

    def closure():
        a.grad = b.grad = None
        seen.append((a.detach().clone(), b.detach().clone()))
        loss = 0.5 * (a ** 2).sum() + 0.5 * (b ** 2).sum()
        loss.backward()
        return loss

    # Execute
    opt.step(closure)
    # Assert: g = (3, 0, 4), ||g|| = 5, e = 0.5 g / 5 in both groups; theta restored (lr = 0)
    assert len(seen) == 2
    torch.testing.assert_close(seen[1][0], torch.tensor([3.3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(seen[1][1], torch.tensor([4.4], dtype=torch.float64))
    assert torch.equal(a.detach(), torch.tensor([3.0, 0.0], dtype=torch.float64))


def test_adaptive_perturbation_is_scaled_by_theta_squared():
    # Prepare: theta = (1, 2), g = theta (L = 1/2 ||theta||^2); T g = (1, 4), ||T g|| = sqrt(17)
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = SAM([x], lr=0.0, rho=1.0, adaptive=True)
    seen = []

    def closure():
        seen.append(x.detach().clone())
        return _half_square(x)()

    # Execute
    opt.step(closure)
    # Assert: e = rho T^2 g / ||T g|| = (1, 8) / sqrt(17)
    expected = torch.tensor([1.0, 2.0], dtype=torch.float64) + torch.tensor([1.0, 8.0], dtype=torch.float64) / 17 ** 0.5
    torch.testing.assert_close(seen[1], expected)


def test_sam_with_adam_base_equals_adam_on_the_perturbed_gradient():
    # Prepare: a random quadratic, float64; the reference computes g_SAM by hand
    g = torch.Generator().manual_seed(0)
    M = torch.randn(4, 4, generator=g, dtype=torch.float64)
    A, b = M @ M.T + torch.eye(4, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    x = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    sam = SAM([x], torch.optim.Adam, lr=0.01, rho=0.1)
    adam = torch.optim.Adam([y], lr=0.01)
    for _ in range(5):
        # Execute
        sam.step(_quadratic_closure([x], A, b))
        grad = A @ y.detach() + b
        e = 0.1 * grad / (grad.norm() + 1e-12)
        y.grad = A @ (y.detach() + e) + b
        adam.step()
    # Assert
    torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.2, 0.5, 0.8])
def test_wsam_interpolates_between_sgd_and_sam(gamma):
    # Prepare: for plain SGD, theta_WSAM - theta_SGD = alpha (theta_SAM - theta_SGD)
    g = torch.Generator().manual_seed(1)
    M = torch.randn(3, 3, generator=g, dtype=torch.float64)
    A, b = M @ M.T, torch.randn(3, generator=g, dtype=torch.float64)
    start = torch.randn(3, generator=g, dtype=torch.float64)
    ends = {}
    for name, make_opt in {"sgd": lambda p: torch.optim.SGD([p], lr=0.1),
                           "sam": lambda p: SAM([p], lr=0.1, rho=0.2),
                           "wsam": lambda p: WSAM([p], lr=0.1, rho=0.2, gamma=gamma),
                           "wsam_coupled": lambda p: WSAM([p], lr=0.1, rho=0.2, gamma=gamma, decouple=False)}.items():
        p = start.clone().requires_grad_(True)
        opt = make_opt(p)
        closure = _quadratic_closure([p], A, b)
        # Execute: one step from the same point
        if name == "sgd":
            closure()
            opt.step()
        else:
            opt.step(closure)
        ends[name] = p.detach()
    alpha = gamma / (1 - gamma)
    # Assert
    expected = ends["sgd"] + alpha * (ends["sam"] - ends["sgd"])
    torch.testing.assert_close(ends["wsam"], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ends["wsam_coupled"], expected, rtol=1e-10, atol=1e-12)


def test_wsam_gamma_zero_is_the_base_optimizer_bit_for_bit():
    # Prepare: SGD with momentum as the base; WSAM(gamma=0) must follow it exactly
    g = torch.Generator().manual_seed(2)
    A = torch.diag(torch.tensor([1.0, 10.0], dtype=torch.float64))
    b = torch.randn(2, generator=g, dtype=torch.float64)
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    wsam = WSAM([x], lr=0.05, gamma=0.0, rho=0.3, base_kwargs={"momentum": 0.9})
    sgd = torch.optim.SGD([y], lr=0.05, momentum=0.9)
    for _ in range(10):
        # Execute
        wsam.step(_quadratic_closure([x], A, b))
        _quadratic_closure([y], A, b)()
        sgd.step()
    # Assert
    assert torch.equal(x.detach(), y.detach())


def test_wsam_decoupled_differs_from_coupled_with_momentum():
    # Prepare: with momentum the decoupled sharpness step bypasses the momentum buffer
    A = torch.diag(torch.tensor([1.0, 5.0], dtype=torch.float64))
    b = torch.zeros(2, dtype=torch.float64)
    ends = []
    for decouple in (True, False):
        x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
        opt = WSAM([x], lr=0.05, gamma=0.8, rho=0.1, decouple=decouple, base_kwargs={"momentum": 0.9})
        for _ in range(3):
            opt.step(_quadratic_closure([x], A, b))
        ends.append(x.detach())
    # Assert
    assert not torch.allclose(ends[0], ends[1])


def test_wsam_max_norm_clips_the_gradients():
    # Prepare: gamma = 0 (base step only) with a big gradient; lr 1
    x = torch.tensor([30.0, 40.0], dtype=torch.float64, requires_grad=True)
    opt = WSAM([x], lr=1.0, gamma=0.0, max_norm=0.1)
    # Execute
    opt.step(_half_square(x))
    # Assert: the step is the clipped gradient, of norm 0.1
    assert (torch.tensor([30.0, 40.0], dtype=torch.float64) - x.detach()).norm().item() == pytest.approx(0.1, rel=1e-5)


def test_documented_defaults():
    # SAM: rho 0.05, eps 1e-12, not adaptive, SGD base; WSAM (the spec sheet's): gamma 0.9,
    # decoupled, no clipping (the dlrover signature's gamma 0.88 / max_norm 1.0 are not used)
    x = torch.zeros(2, requires_grad=True)
    for opt in (SAM([x], lr=0.1), WSAM([x], lr=0.1)):
        group = opt.param_groups[0]
        assert (group["rho"], group["eps"], group["adaptive"]) == (0.05, 1e-12, False)
        assert isinstance(opt.base_optimizer, torch.optim.SGD)
    wsam = WSAM([x], lr=0.1)
    assert wsam.param_groups[0]["gamma"] == 0.9 and wsam.decouple is True and wsam.max_norm is None


# ---- contract ----------------------------------------------------------------------------------
def test_step_calls_the_closure_twice_and_restores_theta_exactly():
    # Prepare: lr = 0, so after the step theta must equal its value before, bit for bit
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, generator=g).requires_grad_(True)
    before = x.detach().clone()
    opt = SAM([x], lr=0.0, rho=0.37)
    calls = []

    def closure():
        calls.append(1)
        loss = (x.sin() * 3).sum()
        loss.backward()
        return loss

    # Execute
    opt.step(closure)
    # Assert
    assert len(calls) == 2
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("cls", [SAM, WSAM])
def test_non_finite_gradient_in_the_second_pass_restores_theta_and_skips_the_base_step(cls):
    # Docstring choice: a NaN/Inf in either pass raises ValueError, theta restored, B not stepped
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = cls([x], "sgd(momentum=0.9)", lr=0.1)
    opt.step(_half_square(x))  # one good step: B has a momentum buffer
    before, state = x.detach().clone(), copy.deepcopy(opt.state_dict())
    calls = []

    def closure():
        calls.append(1)
        x.grad = None
        loss = 0.5 * (x ** 2).sum()
        loss.backward()
        if len(calls) == 2:
            x.grad[1] = float("nan")
        return loss

    with pytest.raises(ValueError, match="NaN or Inf"):
        opt.step(closure)
    assert len(calls) == 2 and torch.equal(x.detach(), before)
    after = opt.state_dict()["base"]["state"][0]["momentum_buffer"]
    assert torch.equal(after, state["base"]["state"][0]["momentum_buffer"])


def test_closure_without_zero_grad_does_not_double_count():
    # Prepare: a closure that never zeroes, and a stray backward before step
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = SAM([x], lr=0.1, rho=0.05)

    def closure():
        loss = 0.5 * (x ** 2).sum()
        loss.backward()
        return loss

    closure()
    # Execute
    opt.step(closure)
    # Assert: the spec's 0.895, as with a clean closure
    assert x.item() == pytest.approx(0.895, abs=1e-9)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_running_stats_come_from_the_first_pass_only(momentum):
    # Prepare: a BN model; the reference is one forward of the same batch at the start weights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=momentum), nn.ReLU(), nn.Linear(4, 1))
    reference = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=momentum), nn.ReLU(), nn.Linear(4, 1))
    reference.load_state_dict(model.state_dict())
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    opt = WSAM(model.parameters(), lr=0.1, rho=0.5)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    # Execute
    opt.step(closure)
    reference(x)
    # Assert
    bn, ref = model[1], reference[1]
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert bn.num_batches_tracked.item() == 1


def test_frozen_batchnorm_stats_restores_buffers():
    # Prepare
    bn = nn.BatchNorm1d(2)
    before = [bn.running_mean.clone(), bn.running_var.clone()]
    # Execute
    with frozen_batchnorm_stats():
        bn(torch.randn(8, 2) * 5 + 3)
    # Assert
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert bn.num_batches_tracked.item() == 0


@pytest.mark.parametrize("base", ["class", "instance", "spec"])
def test_base_optimizer_forms_give_the_same_run(base):
    # Prepare: SGD with momentum given three ways; the "class" run is the reference
    def run(form):
        x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
        if form == "class":
            opt = SAM([x], torch.optim.SGD, lr=0.1, base_kwargs={"momentum": 0.9})
        elif form == "instance":
            opt = SAM([x], torch.optim.SGD([x], lr=0.1, momentum=0.9))
        else:
            opt = SAM([x], "sgd(momentum=0.9)", lr=0.1)
        for _ in range(4):
            opt.step(_half_square(x))
        return x.detach()

    # Execute / Assert
    assert torch.equal(run(base), run("class"))


def test_lr_scheduler_drives_the_shared_param_groups():
    # Prepare
    x = torch.tensor([1.0], requires_grad=True)
    opt = SAM([x], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    # Execute
    opt.step(_half_square(x))
    sched.step()
    # Assert
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("cls", [SAM, WSAM])
def test_state_dict_round_trip_continues_bit_identically(cls):
    # Prepare: Adam base (it has state); 3 steps, save, then 3 more two ways
    g = torch.Generator().manual_seed(4)
    M = torch.randn(3, 3, generator=g, dtype=torch.float64)
    A, b = M @ M.T, torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_(True)
    opt = cls([x], torch.optim.Adam, lr=0.05, rho=0.1)
    for _ in range(3):
        opt.step(_quadratic_closure([x], A, b))
    saved_x, saved_state = x.detach().clone(), copy.deepcopy(opt.state_dict())  # torch shares tensors
    for _ in range(3):
        opt.step(_quadratic_closure([x], A, b))
    # Execute
    y = saved_x.clone().requires_grad_(True)
    fresh = cls([y], torch.optim.Adam, lr=0.05, rho=0.1)
    fresh.load_state_dict(saved_state)
    for _ in range(3):
        fresh.step(_quadratic_closure([y], A, b))
    # Assert
    assert torch.equal(x.detach(), y.detach())


def test_parameter_without_grad_is_neither_perturbed_nor_stepped():
    # Prepare
    used = torch.tensor([1.0], requires_grad=True)
    unused = torch.tensor([5.0], requires_grad=True)
    opt = SAM([used, unused], lr=0.1, base_kwargs={"momentum": 0.9})
    seen = []

    def closure():
        seen.append(unused.detach().clone())
        used.grad = None
        loss = 0.5 * (used ** 2).sum()
        loss.backward()
        return loss

    # Execute
    opt.step(closure)
    # Assert
    assert all(s.item() == 5.0 for s in seen) and unused.item() == 5.0
    assert unused.grad is None


def test_zero_gradient_gives_a_finite_no_op():
    # Prepare
    x = torch.tensor([0.0, 0.0], requires_grad=True)
    opt = WSAM([x], lr=0.1)
    # Execute
    opt.step(_half_square(x))
    # Assert
    assert torch.equal(x.detach(), torch.zeros(2))


def test_sparse_gradient_raises():
    # Prepare
    emb = nn.Embedding(5, 2, sparse=True)
    opt = SAM(emb.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = emb(torch.tensor([1, 2])).sum()
        loss.backward()
        return loss

    # Execute / Assert
    with pytest.raises(SparseGradientError, match="SAM"):
        opt.step(closure)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"rho": -0.1}, ValueError, "rho"),
    ({"eps": -1.0}, ValueError, "eps"),
    ({"adaptive": 1}, TypeError, "adaptive"),
    ({"base_kwargs": [("momentum", 0.9)]}, TypeError, "base_kwargs"),
    ({"base_optimizer": 3}, TypeError, "base_optimizer"),
    ({"base_optimizer": SAM}, ValueError, "base_optimizer"),
])
def test_bad_sam_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        SAM([torch.zeros(1, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"gamma": 1.0}, ValueError, "gamma"),
    ({"gamma": -0.1}, ValueError, "gamma"),
    ({"max_norm": 0.0}, ValueError, "max_norm"),
    ({"decouple": "yes"}, TypeError, "decouple"),
])
def test_bad_wsam_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        WSAM([torch.zeros(1, requires_grad=True)], **kwargs)


def test_instance_base_must_hold_the_same_params_and_no_settings():
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match="params"):
        SAM([a], torch.optim.SGD([b], lr=0.1))
    with pytest.raises(ValueError, match="lr"):
        SAM([a], torch.optim.SGD([a], lr=0.1), lr=0.2)


def test_step_without_closure_raises():
    opt = WSAM([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(TypeError, match="closure"):
        opt.step()


def test_registry_builds_both():
    x = torch.zeros(2, requires_grad=True)
    assert isinstance(make("optimizer", "sam(rho=0.1)", [x], lr=0.1), SAM)
    opt = make("optimizer", "wsam(gamma=0.5)", [x], lr=0.1)
    assert isinstance(opt, WSAM) and opt.param_groups[0]["gamma"] == 0.5


@pytest.mark.slow
def test_tiny_hugging_face_model_trains_with_sam_and_wsam():
    # Prepare: a 2-layer GPT-2 with random weights, one fixed batch
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64)
    ids = torch.randint(64, (4, 16), generator=torch.Generator().manual_seed(0))
    for cls in (SAM, WSAM):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
        opt = cls(model.parameters(), torch.optim.AdamW, lr=3e-3)

        def closure():
            opt.zero_grad()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            return loss

        # Execute
        losses = [opt.step(closure).item() for _ in range(6)]
        # Assert
        assert losses[-1] < losses[0]
