"""Experiments that write their History at the end stream through ``flush``: a live panel that
flushes before every frame sees the steps so far, and the finished History is the same as an
unwatched run's (each step written once, in order, with the same values and metadata)."""
import pytest

from lab import progress
from lab.experiments import run

CASES = [
    ("digits_mlp", dict(steps=12)),
    ("digits_mlp", dict(steps=25, lr=1e20, optimizer="sgd(momentum=0.9)")),  # blows up: rows stop at the NaN
    ("es_regression", dict(steps=6, population=8)),
    ("memory_efficient", dict(steps=6, hidden=(16, 16))),
    ("optimizer_on_surface", dict(steps=25)),
    ("optimizer_on_surface", dict(steps=40, lr=50.0, optimizer="sgd")),  # diverges: the path is cut
]


def _watched(name, overrides):
    """Run with a hook that flushes at every step and records how many rows the History had."""
    seen = []

    def hook(frames):
        f = frames[-1]
        if f.flush is not None:
            f.flush()
            seen.append((f.k, len(f.history)))

    with progress.hook(hook):
        h = run(name, device="cpu", **overrides)
    return h, seen


def _timeless(h):
    """The History without its wall-clock times (they differ between any two runs)."""
    d = h.to_dict()
    d["meta"] = {k: v for k, v in d["meta"].items() if k != "wall_time"}
    d["rows"] = [{k: v for k, v in row.items() if k != "wall_time"} for row in d["rows"]]
    return d


@pytest.mark.parametrize("name,overrides", CASES)
def test_flushed_runs_stream_and_end_as_unwatched_runs(name, overrides):
    plain = run(name, device="cpu", **overrides)
    watched, seen = _watched(name, overrides)
    assert seen, f"{name} passes flush= to its progress loop"
    assert _timeless(watched) == _timeless(plain), "flushing while running changes the History"
    ks = [k for k, _ in seen]
    rows = [n for _, n in seen]
    assert rows == sorted(rows), "rows only grow"
    if plain.meta.get("diverged") is None:
        # at step k the k steps run so far are in the History (surfaces: the checked ones)
        assert any(0 < n < len(plain) for n in rows), f"rows while running: {seen}"
        assert all(n <= k for k, n in seen if k < ks[-1])


def test_flush_must_be_callable():
    with pytest.raises(TypeError, match="flush"):
        list(progress.steps(3, flush=42))


def test_flow_pretraining_streams_its_curves_with_the_samples_pending():
    """The fit hands its History to the progress loop; the figures of a partial run show the
    curves so far and a placeholder for the samples drawn at the end."""
    from lab.registry import get

    plot = get("experiment", "flow_pretrain").plot
    drawn = []

    def hook(frames):
        f = frames[-1]
        if f.history is not None and 0 < len(f.history) and not drawn:
            figs = plot(f.history)
            drawn.append((len(f.history), [len(fig.data) for fig in figs],
                          figs[0].layout.annotations[0].text if figs[0].layout.annotations else ""))

    with progress.hook(hook):
        h = run("flow_pretrain", device="cpu", steps=6, eval_every=3, hidden=16)
    assert drawn, "flow_pretrain passes its History to the progress loop"
    rows, traces, note = drawn[0]
    assert rows < len(h) and traces[1] >= 1 and "appears when the run ends" in note
    assert len(plot(h)[0].data) >= 2, "the finished run draws the samples"


def test_figures_of_partial_runs_show_what_is_there_and_a_placeholder_for_the_rest():
    """A live panel draws comparisons run by run and runs before their end-of-run artifacts:
    the sign and COPO figures take the runs finished so far, VAS the value-model fit so far."""
    import numpy as np

    from lab.history import History, Runs
    from lab.viz.curricula import vas_figure
    from lab.viz.segments import copo_figure, sign_figure

    h = History(meta={"algorithm": "psr"})
    for k in range(3):
        h.append(k, reward=0.1 * k, entropy=1.0 - 0.1 * k, adv_zero_frac=0.5)
    figs = sign_figure(Runs({"psr": h}))
    assert len(figs[0].data) == 2 and "appears when the run ends" in figs[1].layout.annotations[0].text
    h.artifacts["effective_correct"] = 2.5
    assert list(sign_figure(Runs({"psr": h}))[1].data[0].y) == [2.5]
    grpo_only = copo_figure(Runs({"grpo": h}))
    assert [t.name for t in grpo_only[1].data] == ["grpo: adv_zero_frac"]

    seen = []

    def hook(frames):
        f = frames[-1]
        if f.history is not None and len(f.history) and not seen:
            seen.append(vas_figure(f.history))

    with progress.hook(hook):
        done = run("value_augmented_sampling", device="cpu", steps=3, n_prompts=4, group_size=2,
                   eval_prompts=4, betas=(0.0, 2.0))
    partial = seen[0]
    assert [t.name for t in partial.data] == ["value loss"] and np.isfinite(partial.data[0].y).all()
    assert "appears when the run ends" in partial.layout.annotations[1].text
    assert {t.name for t in vas_figure(done).data} == {"value loss", "reward", "exact accuracy"}
    with pytest.raises(ValueError, match="VAS evaluation"):
        vas_figure(History())
