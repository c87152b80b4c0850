"""Opening a lesson: the first cell says how to start and what to try; the tour links every lesson."""
import pathlib
import re

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_says_run_all_and_what_to_try(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown"
    assert "Run ▸▸ (Run All) to start" in first.source
    assert "Try first:" in first.source and "`" in first.source.split("Try first:")[1], \
        "name the control to move first"


def test_the_tour_links_every_lesson():
    tour = nbformat.read(ROOT / "notebooks" / "00_tour.ipynb", as_version=4)
    text = "\n".join(c.source for c in tour.cells if c.cell_type == "markdown")
    links = re.findall(r"\[[^\]]+\]\((\d\d_[a-z_]+\.ipynb)\)", text)
    assert links == [p.name for p in NOTEBOOKS], "the lesson list is made of links, one per notebook, in order"
