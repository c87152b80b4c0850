"""Notebooks 13, 14 and 15: every panel shows its claims, each lesson opens with what to see, what to
move first and a question, and the README's lesson map carries the claims verbatim."""
import pathlib

import pytest

from lab.claims import claims_for
from tests._shared import check_lesson_opening, check_panels_show_claims

ROOT = pathlib.Path(__file__).resolve().parents[1]
PANELS = {"13_flow_rl": ("finetune", "guidance", "pretrain"),
          "14_continual_and_phenomena": ("stability_gap", "cpt", "useful", "ibcl", "double_descent",
                                         "opposing_signals", "large_batch", "highdim", "algoperf"),
          "15_peft_and_merging": ("single", "sweep", "merging")}


@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_every_panel_shows_its_claims_checked_on_three_seeds(notebook):
    check_panels_show_claims(notebook, PANELS[notebook])


@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_lesson_opens_with_what_to_see_what_to_move_and_a_question(notebook):
    check_lesson_opening(notebook, ("**Move first.**", "**What to expect.**", "**Check yourself.**"))


@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_readme_lesson_map_lists_the_claims_verbatim(notebook):
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| [`{notebook}`]"))
    for claim in claims_for(notebook):
        assert f"**Claim:** {claim.text}" in row, claim.id
