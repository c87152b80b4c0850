"""Local SGD / DiLoCo, EDiT and A-EDiT: hand-checked outer steps, the penalty, async tolerance."""
import math

import pytest
import torch
from torch.func import grad, vmap

from lab.distributed import (
    AEDiT, EDiT, EWMADetector, LocalSGD, OuterSGD, clip_pseudo_grad, make_problem, norm_weights,
)
from lab.distributed.simulate import batch_grads, batch_loss, train
from lab.registry import make


def test_registered_names():
    assert isinstance(make("distributed", "local_sgd"), LocalSGD)
    assert isinstance(make("distributed", "edit"), EDiT)
    assert isinstance(make("distributed", "a_edit(sync_time=2.0)"), AEDiT)


def test_outer_nesterov_by_hand():
    # Prepare: anchor 0, Delta = 1 twice, lr 0.5, mu 0.9
    outer = OuterSGD(lr=0.5, momentum=0.9, nesterov=True)
    anchor, delta = torch.zeros(1), torch.ones(1)
    # Execute / Assert: b = 1 -> step 0.5 (1 + 0.9) = 0.95; b = 1.9 -> 0.5 (1 + 1.71) = 1.355
    anchor = outer.step(anchor, delta)
    assert anchor.item() == pytest.approx(-0.95)
    anchor = outer.step(anchor, delta)
    assert anchor.item() == pytest.approx(-0.95 - 1.355)


def test_local_sgd_h1_equals_data_parallel_sgd():
    # Prepare: two workers, one step each of SGD(lr) from the anchor
    anchor = torch.tensor([1.0, -2.0])
    grads = torch.tensor([[0.2, 0.4], [0.6, -0.8]])
    lr = 0.1
    workers = anchor - lr * grads
    # Execute: Local SGD with outer lr 1, no momentum
    new = LocalSGD(outer_lr=1.0, outer_momentum=0.0).sync(anchor, workers)
    # Assert: = anchor - lr * mean gradient = [1 - 0.04, -2 + 0.02]
    assert torch.allclose(new, torch.tensor([0.96, -1.98]))


def test_local_sgd_h1_matches_sgd_on_the_simulator():
    problem = make_problem(workers=3, dim=4, samples=8, generator=torch.Generator().manual_seed(1))
    h = train(problem, LocalSGD(outer_lr=1.0, outer_momentum=0.0), rounds=5, sync_interval=1, inner="sgd",
              inner_lr=0.05, batch_size=8)
    theta = torch.zeros(4, dtype=problem.X.dtype)
    for _ in range(5):  # full batch: same data every step; SGD on the global loss
        theta = theta - 0.05 * batch_grads(theta.expand(3, 4), problem.X, problem.y).mean(0)
    assert h["loss"][-1] == pytest.approx(problem.loss(theta), rel=1e-5)


@pytest.mark.slow  # first torch.func call compiles for several seconds
def test_batched_gradient_equals_torch_func():
    g = torch.Generator().manual_seed(0)
    theta, X, y = torch.randn(3, 4, generator=g), torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, generator=g)
    assert torch.allclose(batch_grads(theta, X, y), vmap(grad(batch_loss))(theta, X, y), atol=1e-6)


def test_norm_weights_worked_example():
    w = norm_weights(torch.tensor([1.0, 2.0]), 1.0)
    assert torch.allclose(w, torch.tensor([0.7311, 0.2689]), atol=1e-4)
    w = norm_weights(torch.tensor([1.0, 2.0 + 1e6]), 1.0)  # a flagged worker gets weight 0
    assert torch.allclose(w, torch.tensor([1.0, 0.0]))


def test_clip_pseudo_grad():
    delta = torch.tensor([3.0, 4.0])
    assert torch.allclose(clip_pseudo_grad(delta, 1.0), delta / 5, atol=1e-6)
    assert torch.equal(clip_pseudo_grad(delta, 10.0), delta)
    assert torch.equal(clip_pseudo_grad(delta, None), delta)


def test_detector_flags_a_jump_not_a_drop():
    det = EWMADetector(1, alpha=0.2, warmup=5, threshold=3.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert not det(1.0 + 0.01 * torch.randn(1, generator=g))[0]
    assert det(torch.tensor([5.0]))[0]  # spike
    assert not det(torch.tensor([0.1]))[0]  # drop is not flagged


def test_edit_penalty_eliminates_outlier_worker():
    # Prepare: 3 workers with similar small pseudo-gradients for a while, then worker 2 spikes
    edit = EDiT(outer_lr=1.0, outer_momentum=0.0, temperature=1.0, ewma_warmup=3, ewma_alpha=0.2)
    plain = LocalSGD(outer_lr=1.0, outer_momentum=0.0)
    g = torch.Generator().manual_seed(0)
    anchor = torch.zeros(4)
    for _ in range(10):
        edit.sync(anchor, -(0.1 + 0.01 * torch.randn(3, 4, generator=g)))
    workers = torch.full((3, 4), -0.1)
    workers[2] = -50.0
    # Execute
    new_edit = edit.sync(anchor, workers)
    new_plain = plain.sync(anchor, workers)
    # Assert: worker 2 eliminated (weight softmax(-(n + 1e6)) = 0) -> the anchor moves to the two normal
    # workers at -0.1; the plain average is dragged to -(0.1 + 0.1 + 50) / 3
    assert edit.last_stats["flagged"] == 1.0
    assert torch.allclose(new_edit, torch.full((4,), -0.1))
    assert new_plain[0].item() == pytest.approx(-(0.1 + 0.1 + 50) / 3)


def test_edit_norm_weighting_and_clip_shrink_large_pseudo_gradient():
    anchor = torch.zeros(2)
    workers = torch.tensor([[-0.1, 0.0], [-3.0, 0.0]])  # norms 0.1 and 3
    edit = EDiT(outer_lr=1.0, outer_momentum=0.0, temperature=0.5, skip_anomaly=False, clip=0.2)
    new = edit.sync(anchor, workers)
    w = torch.softmax(torch.tensor([-0.2, -6.0]), 0)
    expected = w[0] * 0.1 + w[1] * 3.0  # Delta after weighting, far below the plain average 1.55
    # new anchor = -min(Delta, clip 0.2) (clip ratio uses ||Delta|| + 1e-6)
    assert -new[0].item() == pytest.approx(min(expected.item(), 0.2), rel=1e-4)
    assert -new[0].item() < 1.55


def test_edit_all_flagged_skips_outer_step():
    edit = EDiT(ewma_warmup=2, ewma_alpha=0.5)
    anchor, g = torch.zeros(2), torch.Generator().manual_seed(0)
    for _ in range(6):
        edit.sync(anchor, -0.1 - 0.01 * torch.rand(2, 2, generator=g))
    anchor = torch.zeros(2)
    new = edit.sync(anchor, torch.tensor([[-100.0, 0.0], [-100.0, 0.0]]))
    assert torch.equal(new, anchor)


def test_edit_layer_sizes_must_sum_to_p():
    with pytest.raises(ValueError, match="layer_sizes"):
        EDiT(layer_sizes=(1, 2)).sync(torch.zeros(4), torch.zeros(2, 4))


def test_a_edit_step_weights_by_hand():
    a = AEDiT(temperature=None, skip_anomaly=False, outer_lr=1.0, outer_momentum=0.0)
    new = a.sync(torch.zeros(1), torch.tensor([[-3.0], [-1.0]]), torch.tensor([3, 1]))
    assert new.item() == pytest.approx(-(0.75 * 3 + 0.25 * 1))
    assert a.steps_per_round(torch.tensor([0.25, 1.0, 3.0])).tolist() == [4, 1, 0]


def test_a_edit_tolerates_a_slow_worker():
    # Prepare: 4 workers, one 8x slower; same wall-clock budget for EDiT (H = 8) and A-EDiT (8 s windows)
    problem = make_problem(workers=4, dim=6, samples=64, generator=torch.Generator().manual_seed(0))
    times = torch.tensor([1.0, 1.0, 1.0, 8.0])
    sync = train(problem, EDiT(), rounds=6, sync_interval=8, step_times=times)  # 6 rounds * 64 s
    async_ = train(problem, AEDiT(sync_time=8.0), rounds=48, step_times=times)  # 48 rounds * 8 s
    # Assert: same clock, A-EDiT is much further along (sync waits for the straggler)
    assert sync["wall_clock"][-1] == async_["wall_clock"][-1] == 384.0
    assert async_["loss"][-1] < sync["loss"][-1]
    assert async_["inner_steps"][-1] > 3 * sync["inner_steps"][-1]


def test_outliers_hurt_local_sgd_more_than_edit():
    # Prepare: 8 workers with inner SGD; each round a worker has a 5% chance of a bad shard (labels x20)
    problem = make_problem(workers=8, dim=6, samples=64, generator=torch.Generator().manual_seed(0))
    kw = dict(rounds=40, sync_interval=4, inner="sgd", inner_lr=0.05, outlier_prob=0.05)
    # Execute: the same outlier draws for both (same generator seed), plain averaging as outer step
    plain = train(problem, LocalSGD(outer_lr=1.0, outer_momentum=0.0), generator=torch.Generator().manual_seed(3), **kw)
    edit = train(problem, EDiT(outer_lr=1.0, outer_momentum=0.0, ewma_warmup=5),
                 generator=torch.Generator().manual_seed(3), **kw)
    # Assert: EDiT's penalty keeps the loss near the optimum, plain averaging keeps getting kicked away
    assert edit["flagged"].sum() > 0
    assert edit["loss"][10:].mean() < 0.2 * plain["loss"][10:].mean()


@pytest.mark.parametrize("bad, match", [
    (dict(outer_lr=-1.0), "lr"), (dict(temperature=0.0), "temperature"), (dict(clip=-1.0), "clip"),
])
def test_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        EDiT(**bad)


def test_bad_shapes_and_types():
    with pytest.raises(ValueError, match="workers"):
        LocalSGD().sync(torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="workers"):
        LocalSGD().sync(torch.zeros(3), [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="step_times"):
        AEDiT().steps_per_round(torch.tensor([1.0, 0.0]))


def test_finite_with_zero_pseudo_gradients():
    edit = EDiT(ewma_warmup=0)
    new = edit.sync(torch.ones(3), torch.ones(2, 3))
    assert torch.isfinite(new).all()
    assert math.isfinite(norm_weights(torch.zeros(2), 1.0).sum().item())


def test_local_sgd_equals_fedavg_with_full_participation():
    # The spec's cross-check: plain Local SGD is FedAvg with every client present and equal data sizes.
    from lab.federated import FedAvg

    g = torch.Generator().manual_seed(0)
    anchor = torch.randn(5, generator=g, dtype=torch.float64)
    workers = anchor + 0.1 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    fedavg = FedAvg().setup(3, 5)
    updates = {k: workers[k] - anchor for k in range(3)}  # federated sign: after - before
    expected = fedavg.aggregate(anchor, updates, {k: 10 for k in range(3)}, 0)
    ours = LocalSGD(outer_lr=1.0, outer_momentum=0.0, nesterov=False).sync(anchor, workers)
    assert torch.allclose(ours, expected)


def test_state_dict_exposes_outer_momentum_and_detectors():
    edit = EDiT(layer_sizes=(2, 1))
    edit.sync(torch.zeros(3), -torch.ones(2, 3))
    state = edit.state_dict()
    assert torch.equal(state["outer"]["momentum_buffer"], torch.ones(3))
    assert len(state["detectors"]) == 2 and state["detectors"][0]["count"] == [1, 1]


# ---- the choices stated in the module docstrings ---------------------------------------------
def _warm_up(algorithm, workers, p, syncs=10):
    g = torch.Generator().manual_seed(0)
    for _ in range(syncs):
        algorithm.sync(torch.zeros(p), -(0.1 + 0.01 * torch.randn(workers, p, generator=g)))


def test_edit_without_temperature_eliminates_per_layer_and_keeps_the_share():
    # Prepare: two layers of two entries; after a warm-up worker 2 spikes in layer 0 only
    edit = EDiT(outer_lr=1.0, outer_momentum=0.0, temperature=None, ewma_warmup=3, ewma_alpha=0.2,
                layer_sizes=(2, 2))
    _warm_up(edit, 3, 4)
    workers = torch.full((3, 4), -0.1)
    workers[2, :2] = -50.0
    # Execute
    new = edit.sync(torch.zeros(4), workers)
    # Assert: layer 0 averages (0.1, 0.1, 0) with 1/3 each (the eliminated worker keeps its share);
    # layer 1 keeps worker 2, whose layer-1 pseudo-gradient is normal
    assert edit.last_stats["flagged"] == 1.0
    torch.testing.assert_close(new, torch.tensor([-0.2 / 3, -0.2 / 3, -0.1, -0.1]))


def test_a_edit_a_worker_without_steps_keeps_only_the_norm_weight():
    # worker 1 finished no step: Delta_1 = 0, n_1 = 0; w = 0.5 softmax(-(1, 0)) + 0.5 (2, 0) / 2
    a = AEDiT(temperature=1.0, skip_anomaly=False, outer_lr=1.0, outer_momentum=0.0, step_weight_ratio=0.5)
    new = a.sync(torch.zeros(1), torch.tensor([[-1.0], [0.0]]), torch.tensor([2, 0]))
    w = 0.5 * torch.softmax(torch.tensor([-1.0, 0.0]), 0) + 0.5 * torch.tensor([1.0, 0.0])
    assert new.item() == pytest.approx(-w[0].item())


def test_a_edit_a_flagged_worker_keeps_its_step_share():
    # Prepare: after a warm-up worker 1 spikes while it took 3 of the 4 steps
    a = AEDiT(temperature=1.0, ewma_warmup=3, ewma_alpha=0.2, outer_lr=1.0, outer_momentum=0.0,
              step_weight_ratio=0.5)
    _warm_up(a, 2, 2)
    # Execute
    new = a.sync(torch.zeros(2), torch.tensor([[-0.1, -0.1], [-50.0, -50.0]]), torch.tensor([1, 3]))
    # Assert: w_0 = 0.5 * 1 + 0.5 * 1/4; w_1 = 0.5 * 0 + 0.5 * 3/4 multiplies a zeroed Delta_1, so the
    # step shrinks from 0.1 to 0.0625
    assert a.last_stats["flagged"] == 1.0
    torch.testing.assert_close(new, torch.full((2,), -0.0625))


def test_inner_optimizer_state_is_kept_across_syncs(monkeypatch):
    from lab.distributed import simulate

    # record AdamW's step counter of every inner step
    seen, original = [], simulate.inner_step

    def recording(theta, grads, state, **kw):
        out = original(theta, grads, state, **kw)
        seen.append(int(state["step"].max()))
        return out

    monkeypatch.setattr(simulate, "inner_step", recording)
    problem = make_problem(workers=2, dim=3, samples=8, generator=torch.Generator().manual_seed(0))
    train(problem, LocalSGD(), rounds=3, sync_interval=2, inner="adamw")
    # 3 rounds of 2 steps: the counter runs on to 6 (a reset at each sync would stop at 2)
    assert seen == [1, 2, 3, 4, 5, 6]
