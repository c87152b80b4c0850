"""Every lesson's claims, run: the effect shows on a majority of seeds, the control removes it.

``pytest -m claims`` runs only these. The framework itself (lab.claims) is tested below on a
deterministic toy claim whose predicate can be inverted.
"""
import pytest

from lab import claims as claims_mod
from lab.claims import Claim, claims_for

ALL = claims_mod.all_claims()


@pytest.mark.claims
@pytest.mark.parametrize("claim", ALL, ids=lambda c: c.id)
def test_claim_holds_with_its_config_and_not_with_its_control(claim):
    result = claim.check()
    assert result.effect_holds, f"effect did not show: {result}"
    assert not result.control_holds, f"the control did not remove the effect: {result}"


def _momentum_claim(**changes):
    kwargs = dict(
        notebook="00_tour", panel="test",
        text="heavy-ball momentum ends closer to the minimum of the quadratic than plain SGD",
        experiment="optimizer_on_surface",
        config={"surface": "quadratic", "optimizer": "sgd(momentum=0.9)", "lr": 0.005, "steps": 100},
        control={"optimizer": "sgd"},
        holds=lambda h: h["distance"][-1] < 0.05,
        seed_field=None,
    )
    kwargs.update(changes)
    return Claim(**kwargs)


def test_a_claim_holds_and_its_inverted_predicate_fails():
    claim = _momentum_claim()
    result = claim.check()
    assert result.ok and result.effect == (True,) and result.control == (False,)
    inverted = _momentum_claim(holds=lambda h: not h["distance"][-1] < 0.05)
    assert not inverted.check().ok


def test_presets_and_configs_follow_the_claim():
    claim = _momentum_claim()
    assert claim.presets()[claims_mod.EFFECT]["optimizer"] == "sgd(momentum=0.9)"
    assert claim.presets()[claims_mod.CONTROL]["optimizer"] == "sgd"
    assert claim.presets()[claims_mod.CONTROL]["lr"] == 0.005            # control is on top of config
    assert "Claim" in claim.markdown() and "seeds" not in claim.markdown()     # deterministic: one run
    seeded = _momentum_claim(experiment="digits_mlp", config={"steps": 5}, seed_field="seed", seeds=3)
    assert seeded.configured("control", seed=2).seed == 2
    assert "3 seeds" in seeded.markdown() and seeded.seed_count == 3


def test_variants_give_labelled_runs():
    claim = _momentum_claim(variants={"sgd": {"optimizer": "sgd"}, "adam": {"optimizer": "adam"}},
                            holds=lambda runs: list(runs) == ["sgd", "adam"],
                            control={"steps": 5})
    runs = claim.run("effect", seed=1)
    assert list(runs) == ["sgd", "adam"] and runs["adam"].meta["config"]["optimizer"] == "adam"
    assert runs["sgd"].meta["config"]["lr"] == 0.005


def test_bad_claims_are_rejected():
    with pytest.raises(ValueError, match="control"):
        _momentum_claim(control={})
    with pytest.raises(ValueError, match="seeds"):
        _momentum_claim(seeds=0)
    with pytest.raises(ValueError, match="notebook"):
        _momentum_claim(notebook="tour")
    with pytest.raises(TypeError, match="holds"):
        _momentum_claim(holds=3)
    with pytest.raises(ValueError, match="which"):
        _momentum_claim().configured("both")
    with pytest.raises(KeyError, match="no claims"):
        claims_for("99_nothing")


def test_panel_presets_set_all_controls_at_once():
    from lab.viz.panel import panel

    claim = _momentum_claim()
    p = panel("optimizer_on_surface", {"optimizer": ["sgd", "sgd(momentum=0.9)", "adam"],
                                       "lr": (0.001, 0.1, 0.001)}, config=claim.configured("effect"),
              claims=[claim], presets={"adam": {"optimizer": "adam", "lr": 0.05}})
    assert list(p.presets) == [claims_mod.EFFECT, claims_mod.CONTROL, "adam"]
    p.preset.value = claims_mod.CONTROL
    assert p.controls["optimizer"].value == "sgd" and p.result["distance"][-1] > 0.05
    runs_before = p.result
    p.preset.value = claims_mod.EFFECT
    assert p.controls["optimizer"].value == "sgd(momentum=0.9)" and p.config.surface == "quadratic"
    assert p.result is not runs_before and p.result["distance"][-1] < 0.05
    p.preset.value = claims_mod.CONTROL
    assert p.controls["optimizer"].value == "sgd" and p.result["distance"][-1] > 0.05
    p.controls["lr"].value = 0.01                    # a manual change leaves the preset
    assert p.preset.value == "(custom)"
    p.apply_preset("adam")                           # names lr: set; everything else from the opening view
    assert p.controls["lr"].value == 0.05 and p.controls["optimizer"].value == "adam"
    p.controls["lr"].value = 0.02
    p.apply_preset(claims_mod.EFFECT)                # does not name lr: back to the opening value
    assert p.controls["lr"].value == p._default_values["lr"] and p.result["distance"][-1] < 0.05
    with pytest.raises(KeyError, match="unknown config field"):
        panel("optimizer_on_surface", {}, presets={"x": {"nope": 1}}, run=False)


def test_a_panel_must_open_on_its_claims_config():
    from lab.viz.panel import panel

    claim = _momentum_claim()
    with pytest.raises(ValueError, match="opens on a config where its claim"):
        panel("optimizer_on_surface", {"lr": (0.001, 0.1, 0.001)}, claims=[claim], run=False)
    # a slider whose range excludes the claim's value clamps it: also caught
    cfg = claim.configured("effect")
    with pytest.raises(ValueError, match="'lr'"):
        panel("optimizer_on_surface", {"lr": (0.01, 0.1, 0.01)}, config=cfg, claims=[claim], run=False)
    assert panel("optimizer_on_surface", {"lr": (0.001, 0.1, 0.001)}, config=cfg, claims=[claim],
                 run=False).config == cfg


def test_every_notebook_has_claims_and_every_panel_shows_them():
    # issue 14: at least one claim per notebook, 25 or more in all, and each live panel a notebook
    # builds passes its claims (segment_panel passes them itself)
    import json
    import pathlib
    import re

    from lab.claims import all_claims

    notebooks = sorted(p.stem for p in pathlib.Path("notebooks").glob("[0-9][0-9]_*.ipynb"))
    by_notebook = {nb: [c for c in all_claims() if c.notebook == nb] for nb in notebooks}
    assert not [nb for nb, claims in by_notebook.items() if not claims]
    assert sum(map(len, by_notebook.values())) >= 25
    for nb in notebooks:
        cells = json.loads(pathlib.Path(f"notebooks/{nb}.ipynb").read_text())["cells"]
        for cell in cells:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and re.search(r"(?<![\w.])panel\(", src):
                assert "claims" in src, f"{nb}: a panel without its claims:\n{src[:200]}"
