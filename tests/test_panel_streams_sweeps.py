"""Panels that stream a sweep, a measurement or a comparison point by point, and the speed-ups
behind the notebook 02/07/14 panels (each checked to give the numbers of the plain computation).

A streaming experiment hands a History of what is finished so far to its outermost progress
loop; a live panel draws that History between two steps. The tests record what a panel's hook
would see (copies of the History at each iteration of that loop) and check (1) it holds exactly
the points finished so far, equal to the first points of the final result, and (2) the finished
result equals an unwatched run's.
"""
import copy
import dataclasses
import importlib

import numpy as np
import pytest
import torch

from lab import progress
from lab.history import History
from lab.viz.figures import curves
from lab.viz.panel import panel

panel_mod = importlib.import_module("lab.viz.panel")


def _outer_snapshots(fn, *args):
    """Run ``fn(*args)`` with a hook that copies the History of the outermost loop handing one over,
    at every iteration of that loop; returns (result, [(k, History copy)])."""
    seen = []

    def hook(frames):
        outer = next((f for f in frames if f.history is not None), None)
        if outer is not None and frames[-1] is outer:
            seen.append((outer.k, copy.deepcopy(outer.history)))

    with progress.hook(hook):
        result = fn(*args)
    return result, seen


def _timeless(d):
    """A History dict (or anything holding them) without wall-clock times."""
    if isinstance(d, dict):
        return {k: _timeless(v) for k, v in d.items()
                if k not in ("wall_time", "seconds", "seconds_to_target")}
    if isinstance(d, list):
        return [_timeless(v) for v in d]
    return d


# ---- the panel: the outermost loop with a History is the run's ---------------------------------
@dataclasses.dataclass(frozen=True)
class Cfg:
    x: float = 1.0
    points: int = 3
    steps: int = 4


def _sweep(cfg):
    """A sweep of `points` inner runs, each with its own streaming History; the sweep's History
    gets one row per finished inner run."""
    outer = History(meta={"algorithm": "sweep"})
    for i in progress.steps(cfg.points, desc="points", history=outer):
        inner = History(meta={"algorithm": f"run {i}"})
        for k in progress.steps(cfg.steps, desc="run", history=inner):
            inner.append(k, y=cfg.x * k)
        outer.append(i, end=float(inner["y"][-1]) + i)
    return outer


def test_a_sweep_streams_its_own_history_not_its_runs(monkeypatch):
    for name in ("FIRST_FRAME_S", "FIRST_FRAME_UNKNOWN_S", "FRAME_INTERVAL_S", "FRAME_COST_FACTOR"):
        monkeypatch.setattr(panel_mod, name, 0.0)
    shown = []

    def plot(result):
        (label, h), = [(result.meta["algorithm"], result)] if isinstance(result, History) else result.items()
        shown.append((label, len(h)))
        return curves(h, "end")

    p = panel(_sweep, {"x": (0.0, 5.0, 1.0)}, plot, config=Cfg())
    for _ in range(2):                         # the first run, then one that knows the result's shape
        frames, final = shown[:-1], shown[-1]
        assert frames and all(name == "sweep" for name, _ in frames), f"frames drew an inner run: {frames}"
        assert {n for _, n in frames} >= {1, 2}, f"frames after each finished point: {frames}"
        assert final == ("sweep", 3) and p.timings["first_frame"] is not None
        shown.clear()
        p.update()


# ---- notebook 12: the Pareto sweep streams point by point --------------------------------------
def test_pareto_sweep_streams_the_finished_points():
    from lab.experiments.multi_objective import (MultiObjectiveConfig, compare_fronts, pareto_sweep,
                                                 sweep_result)
    from lab.rewards.multi_objective import hypervolume, pareto_front

    cfg = MultiObjectiveConfig(method="recap", steps=4, n_prompts=2, group_size=2, eval_prompts=4, device="cpu")
    grid = ((0.2, 0.8), (0.5, 0.5), (0.8, 0.2))
    final, seen = _outer_snapshots(pareto_sweep, cfg, grid)
    assert final == pareto_sweep(cfg, grid), "watching the sweep changes its result"
    assert final == compare_fronts(cfg, ("recap",), grid)["recap"]
    partial = [(k, h) for k, h in seen if len(h)]
    assert [k for k, _ in partial] == [1, 2, 3], "the History grows by one point per finished run"
    ref = [cfg.hv_reference] * 2
    for k, h in partial:
        res = sweep_result(h)
        assert res["points"] == final["points"][:k] and res["weights"] == [list(w) for w in grid[:k]]
        assert res["hypervolume"] == hypervolume(pareto_front(final["points"][:k]), ref)
        assert h["hypervolume"].tolist() == sorted(h["hypervolume"].tolist()), "the front only grows"
    assert sweep_result(partial[-1][1]) == final
    with pytest.raises(ValueError, match="no finished run"):
        sweep_result(History())
    with pytest.raises(ValueError, match="weight_grid"):
        pareto_sweep(cfg, ())


def test_sweep_figure_draws_a_partial_sweep_as_its_result():
    from lab.experiments.multi_objective import MultiObjectiveConfig, pareto_sweep
    from lab.viz.multi_objective import sweep_figure

    cfg = MultiObjectiveConfig(method="fixed", steps=3, n_prompts=2, group_size=2, eval_prompts=4, device="cpu")
    _, seen = _outer_snapshots(pareto_sweep, cfg, ((0.3, 0.7), (0.7, 0.3)))
    h = next(h for _, h in seen if len(h) == 1)
    fig = sweep_figure({"fixed": h})
    assert len(fig.data) == 1 and len(fig.data[0].x) == 1 and "HV" in fig.data[0].name


# ---- notebook 17: the memory measurement streams per response length ---------------------------
def test_logits_memory_streams_per_measured_length():
    from lab.experiments.real_models import LogitsMemoryConfig, logits_memory

    cfg = LogitsMemoryConfig(vocab_size=512, hidden_size=16, max_len=32, device="cpu")
    final, seen = _outer_snapshots(logits_memory, cfg)
    assert final.steps.tolist() == [8, 16, 32]
    assert [len(h) for _, h in seen] == [0, 1, 2, 3], "one row per measured length, as it is measured"
    for _, h in seen:
        assert h.rows == final.rows[:len(h)]
    assert logits_memory(cfg).rows == final.rows, "watching changes the measurement"
    assert (final["full_logits_mib"] > final["chunked_mib"]).all()


# ---- notebook 14 ---------------------------------------------------------------------------------
def _gd_loop(phi, y, steps, lr, ridge):
    a = torch.zeros(phi.shape[1], dtype=phi.dtype)
    for _ in range(steps):
        a = a - lr * (phi.T @ (phi @ a - y) / len(y) + ridge * a)
    return a


@pytest.mark.parametrize("n,p,ridge,steps", [(30, 10, 0.0, 50), (30, 60, 0.0, 200), (30, 30, 0.05, 120),
                                             (30, 45, 0.0, 0), (30, 20, 0.1, 1)])
def test_gd_least_squares_is_the_gradient_descent_iterate(n, p, ridge, steps):
    from lab.experiments.phenomena import gd_least_squares

    g = torch.Generator().manual_seed(n + p + steps)
    phi = torch.relu(torch.randn(n, p, dtype=torch.float64, generator=g))
    y = torch.randn(n, dtype=torch.float64, generator=g)
    u, s, vh = torch.linalg.svd(phi, full_matrices=False)
    lr = n / float(s[0] ** 2)
    got = gd_least_squares(u, s, vh, y, steps=steps, lr=lr, ridge=ridge)
    want = _gd_loop(phi, y, steps, lr, ridge)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        gd_least_squares(u, s, vh, y, steps=-1, lr=lr)


def test_gd_least_squares_by_hand_on_a_diagonal_problem():
    """Phi = diag(2, 1) (n = 2): GD on ||Phi a - y||^2 / 4 with lr = 0.5 moves coordinate i by the
    factor 1 - 0.5 s_i^2 / 2 per step: a_1 = 1 - 0 after one step (s = 2), a_2 = (1 - 0.75^k) y_2."""
    from lab.experiments.phenomena import gd_least_squares

    phi = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    y = torch.tensor([2.0, 1.0], dtype=torch.float64)                 # the exact fit is a = (1, 1)
    u, s, vh = torch.linalg.svd(phi, full_matrices=False)
    a = gd_least_squares(u, s, vh, y, steps=3, lr=0.5)
    assert torch.allclose(a, torch.tensor([1.0, 1.0 - 0.75 ** 3], dtype=torch.float64))


def test_double_descent_streams_width_by_width():
    from lab.experiments.phenomena import DoubleDescentConfig, double_descent

    cfg = DoubleDescentConfig(widths=(5, 10, 20, 40), n_train=10, n_test=50, d=4, gd_steps=30, device="cpu")
    final, seen = _outer_snapshots(double_descent, cfg)
    assert [len(h) for _, h in seen] == [0, 1, 2, 3, 4]
    for _, h in seen:
        assert h.rows == final.rows[:len(h)]
    assert double_descent(cfg).rows == final.rows


def test_algoperf_streams_the_ranking_of_the_runs_so_far():
    from lab.experiments.optimizers import AlgoPerfConfig, algoperf

    specs = ("sgd(lr=0.1, momentum=0.9)", "adam(lr=1e-2)", "lion(lr=3e-3)")
    cfg = AlgoPerfConfig(optimizers=specs, steps=8, target=0.5, device="cpu")
    final, seen = _outer_snapshots(algoperf, cfg)
    assert [len(h) for _, h in seen] == [0, 1, 2, 3]
    for k, h in seen[1:]:
        # after k runs: the History of algoperf on the first k optimizers alone
        alone = algoperf(dataclasses.replace(cfg, optimizers=specs[:k]))
        assert _timeless(h.to_dict()) == _timeless(alone.to_dict())
        assert list(h.artifacts["runs"]) == list(specs[:k])
    assert _timeless(final.to_dict()) == _timeless(algoperf(cfg).to_dict())
    with pytest.raises(ValueError, match="optimizers"):
        algoperf(dataclasses.replace(cfg, optimizers=()))


def test_useful_streams_plain_training_before_useful():
    from lab.experiments.continual import UsefulConfig, useful_simplicity
    from lab.viz.phenomena import useful_figure

    cfg = UsefulConfig(n_train=120, early_epochs=1, epochs=2, device="cpu")
    final, seen = _outer_snapshots(useful_simplicity, cfg)
    partial = [h for _, h in seen if len(h) == 1][0]
    assert list(partial.artifacts["results"]) == ["plain"] and partial.artifacts["methods"] == ["plain"]
    assert partial.artifacts["results"]["plain"] == final.artifacts["results"]["plain"]
    assert partial.rows == final.rows[:1]
    assert [t.name for t in useful_figure(partial).data] == ["plain"]
    plain = useful_simplicity(cfg).to_dict()
    plain["meta"].pop("wall_time", None)
    watched = final.to_dict()
    watched["meta"].pop("wall_time", None)
    assert watched == plain


def test_plain_sgd_step_is_torch_sgd():
    """The lean step of the continual experiments gives torch.optim.SGD's parameters bit for bit."""
    from lab.experiments.continual import _sgd_step, plain_sgd_lr
    from lab.models import MLP

    torch.manual_seed(0)
    a = MLP(5, (8,), 3)
    b = copy.deepcopy(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.3)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt_a.zero_grad()
        loss = torch.nn.functional.cross_entropy(a(x), y)
        loss.backward()
        opt_a.step()
        lean = _sgd_step(b, opt_b, x, y)
        assert lean.item() == loss.item()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert plain_sgd_lr(opt_b) == 0.3
    for kw in ({"momentum": 0.9}, {"weight_decay": 1e-3}, {"maximize": True}):
        assert plain_sgd_lr(torch.optim.SGD(a.parameters(), lr=0.1, **kw)) is None
    assert plain_sgd_lr(torch.optim.Adam(a.parameters(), lr=0.1)) is None


# ---- notebook 07: Monte Carlo completions with a KV cache ---------------------------------------
def _model(max_len=12):
    from lab.models.transformer import TinyTransformer

    return TinyTransformer(vocab_size=7, d_model=16, n_layers=2, n_heads=2, max_len=max_len,
                           generator=torch.Generator().manual_seed(0)).eval()


def test_decode_with_a_cache_matches_the_full_forward():
    model = _model()
    ids = torch.randint(0, 7, (3, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.forward_hidden(ids)
        h1, cache = model.decode(ids[:, :4])                 # a prefix, then 1 token, then 5 at once
        h2, cache = model.decode(ids[:, 4:5], cache)
        h3, cache = model.decode(ids[:, 5:], cache)
    assert torch.allclose(torch.cat([h1, h2, h3], 1), full, atol=1e-5)
    assert cache[0][0].shape == (3, 2, 10, 8)
    with pytest.raises(ValueError, match="max_len"):
        model.decode(ids[:, :3], cache)


def test_cached_next_logits_repeats_each_row_and_matches_next_logits():
    model = _model()
    prompts = torch.randint(0, 7, (2, 3), generator=torch.Generator().manual_seed(2))
    prefix = torch.randint(0, 7, (2, 2), generator=torch.Generator().manual_seed(3))
    fn = model.cached_next_logits(prompts, prefix, repeat=3)
    rep_p, rep_x = prompts.repeat_interleave(3, 0), prefix.repeat_interleave(3, 0)
    suffix = torch.randint(0, 7, (6, 4), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for t in range(5):
            want = model.next_logits(rep_p, torch.cat([rep_x, suffix[:, :t]], 1))
            assert torch.allclose(fn(suffix[:, :t]), want, atol=1e-5)
    with pytest.raises(ValueError, match="one token"):
        model.cached_next_logits(prompts, prefix)(suffix[:, :2])
    with pytest.raises(ValueError, match="repeat"):
        model.cached_next_logits(prompts, prefix, repeat=0)


def test_complete_with_the_cache_samples_what_the_full_recomputation_samples():
    from lab.experiments.segments import _Prefixed, complete
    from lab.models.policy import generate
    from lab.models.transformer import TinyTransformer
    from toy_envs.token_tasks import make_task

    task = make_task("reverse", difficulty=3)
    model = TinyTransformer.for_task(task, generator=torch.Generator().manual_seed(0)).eval()
    prompts = task.sample_prompts(2, torch.Generator().manual_seed(1))
    prefix = torch.full((2, 1), 3, dtype=torch.long)
    rewards, new = complete(model, task, prompts, prefix, temperature=1.0,
                            generator=torch.Generator().manual_seed(5), repeat=4)
    with torch.no_grad():               # the uncached path on the repeated rows, same generator
        rep_p, rep_x = prompts.repeat_interleave(4, 0), prefix.repeat_interleave(4, 0)
        gen = generate(_Prefixed(model, rep_x), rep_p, task.max_new_tokens - 1, 1.0,
                       torch.Generator().manual_seed(5), eos_id=task.eos_id, pad_id=task.pad_id)
    assert torch.equal(rewards, task.reward(rep_p, torch.cat([rep_x, gen.tokens], 1)).float())
    assert torch.equal(new, gen.mask.sum(-1).float())
    assert rewards.shape == (8,)


# ---- notebook 02: paths travel as float arrays ---------------------------------------------------
def test_sharp_flat_paths_are_float_arrays_with_nan_gaps():
    from lab.experiments import run
    from lab.viz.sharpness import sharp_flat_figure

    h = run("sharp_flat", steps=5, starts=3, device="cpu")
    fig = sharp_flat_figure(h)
    path = next(t for t in fig.data if t.type == "scatter" and t.mode == "lines")
    x = np.asarray(path.x)
    assert x.dtype == np.float64 and x.shape == (3 * 7 - 1,)
    assert np.isnan(x[6::7]).all() and np.isfinite(np.delete(x, np.s_[6::7])).all()
    assert np.allclose(x[:6], np.asarray(h.artifacts["paths"])[0, :, 0])
