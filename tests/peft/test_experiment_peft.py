"""The fine-tuning experiment: every method runs, merges exactly, and the figures build."""
import pytest

from lab.experiments import run
from lab.experiments.peft import METHODS, PeftConfig, peft_finetune, peft_sweep
from lab.viz.peft import finetune_figure, loss_vs_params, merging_figure, rank_allocation


def test_sweep_runs_every_method_with_expected_parameter_counts():
    runs = peft_sweep(PeftConfig(steps=20, rank=2))
    assert set(runs) == set(METHODS)
    counts = {m: h.artifacts["trainable"] for m, h in runs.items()}
    # LoRA: r (d + k) over 8->32, 32->32, 32->4 = 2 * (40 + 64 + 36)
    assert counts["lora"] == counts["hut"] == counts["ist"] == counts["glad"] == counts["loku"] == 280
    assert counts["adalora"] == 280 + 2 * 3 and counts["frozen"] == 0
    assert counts["full"] == 8 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4
    for m, h in runs.items():
        if m not in ("frozen", "full"):
            assert h.artifacts["merge_max_diff"] < 1e-5, m
    assert len(loss_vs_params(runs).data) == len(METHODS)
    frozen = runs["frozen"]["test_loss"][-1]
    for m in ("lora", "hut", "glad", "loku", "ist", "adalora", "full"):   # every method learns the shift
        assert runs[m]["test_loss"][-1] < frozen, m


def test_hut_beats_frozen_base_clearly():
    frozen = peft_finetune(PeftConfig(method="frozen", steps=80))
    hut = peft_finetune(PeftConfig(method="hut", steps=80))
    assert hut["test_loss"][-1] < 0.3 * frozen["test_loss"][-1]


def test_adalora_run_records_rank_history_and_figures():
    h = peft_finetune(PeftConfig(method="adalora", steps=30, rank=4, target_r=2))
    ranks = h.artifacts["rank_history"]
    assert len(ranks) == 30 and sum(ranks[-1]) == 2 * 3       # final budget = target_r x layers
    assert len(finetune_figure(h)) == 3 and rank_allocation(h).data


def test_merging_figure_builds():
    import lab.experiments as E

    h = E.run("checkpoint_merging", steps=20, checkpoint_every=2, n_models=2, ensemble_steps=5)
    run_fig, weights, compare = merging_figure(h)
    a = h.artifacts
    assert a["ckpt_steps"] == [12, 14, 16, 18, 20]                   # second half, every 2 steps
    assert list(weights.data[0].y) == pytest.approx(a["weights"]) and sum(a["weights"]) == pytest.approx(1.0)
    assert list(compare.data[0].y) == pytest.approx([a["test_loss_last"], a["test_loss_uniform"], a["test_loss_mwa"],
                                                     sum(a["single_test_losses"]) / 2, a["ensemble_test_loss"]])
    assert list(run_fig.data[-1].x) == [11, 13, 15, 17, 19]           # checkpoints marked on the curve


def test_config_errors():
    with pytest.raises(ValueError, match="lr"):
        peft_finetune(PeftConfig(lr=-1.0))
    with pytest.raises(ValueError, match="shift_layer"):
        peft_finetune(PeftConfig(shift_layer=5))


@pytest.mark.parametrize("method", ["frozen", "full", "lora", "adalora", "hut", "ist", "glad", "loku"])
def test_every_method_creates_its_tensors_on_the_configured_device(method):
    """tests/test_devices.py runs the smoke config; this runs every method under the meta-device guard."""
    import torch

    from lab import registry

    with torch.device("meta"):                    # anything created without a device lands on meta and fails
        h = run("peft_finetune", **{**registry.get("experiment", "peft_finetune").smoke, "method": method},
                device="cpu")
    assert len(h["test_loss"]) == 3
