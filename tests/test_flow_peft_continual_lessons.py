"""Notebooks 13, 14 and 15: every panel shows its claims, each lesson opens with what to see, what to
move first and a question, and the README's lesson map carries the claims verbatim."""
import json
import pathlib

import pytest

from lab.claims import claims_for

ROOT = pathlib.Path(__file__).resolve().parents[1]
PANELS = {"13_flow_rl": ("finetune", "guidance", "pretrain"),
          "14_continual_and_phenomena": ("stability_gap", "cpt", "useful", "ibcl", "double_descent",
                                         "opposing_signals", "large_batch", "highdim", "algoperf"),
          "15_peft_and_merging": ("single", "sweep", "merging")}


@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_every_panel_shows_its_claims_checked_on_three_seeds(notebook):
    assert {c.panel for c in claims_for(notebook)} == set(PANELS[notebook])
    for claim in claims_for(notebook):
        assert claim.seed_field is None or claim.seeds >= 3, claim.id
        assert claim.control_text, claim.id
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for panel in PANELS[notebook]:
        assert f'claims_for("{notebook}", "{panel}")' in code, (notebook, panel)


@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_lesson_opens_with_what_to_see_what_to_move_and_a_question(notebook):
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    texts = ["".join(c["source"]) for c in cells]
    opening = next(i for i, t in enumerate(texts) if "**What you will see.**" in t)
    first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    assert 0 < opening < first_code and cells[opening]["cell_type"] == "markdown"
    for heading in ("**Move first.**", "**What to expect.**", "**Check yourself.**"):
        assert heading in texts[opening], (notebook, heading)
    assert texts[opening].rstrip().endswith("?"), "the check-yourself question ends the opening"


@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_readme_lesson_map_lists_the_claims_verbatim(notebook):
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| [`{notebook}`]"))
    for claim in claims_for(notebook):
        assert f"**Claim:** {claim.text}" in row, claim.id
