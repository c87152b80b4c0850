"""The quality bar, checked across the whole registry: every algorithm's module is a lesson
(a docstring naming its paper's arXiv id), names are lower_snake_case, experiments run."""
import csv
import importlib
import pathlib
import re

import pytest

from lab import registry

CATALOG = pathlib.Path(__file__).resolve().parent / "data" / "catalog.tsv"        # the copy in the repo
SHARED_CATALOG = pathlib.Path(__file__).resolve().parents[2] / "shared" / "catalog.tsv"   # beside a checkout
ENTRIES = [e for e in registry.entries() if not e.module.startswith("lab.optim.baselines")]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.kind}/{e.name}")
def test_module_docstring_is_a_lesson(entry):
    module = importlib.import_module(entry.module)
    doc = module.__doc__ or ""
    assert len(doc.strip()) >= 200, f"{entry.module}: the module docstring must teach the algorithm"
    if entry.arxiv and entry.kind != "experiment":
        assert entry.arxiv in doc, f"{entry.module}: docstring must name arXiv {entry.arxiv}"
    assert re.fullmatch(r"[a-z][a-z0-9_]*", entry.name)


def _catalog_rows() -> list[dict]:
    assert CATALOG.exists(), f"{CATALOG} is missing: the tests need the repo's copy of catalog.tsv"
    with open(CATALOG, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) > 100 and {"kind", "name"} <= set(rows[0]), "catalog.tsv has no kind/name rows"
    return rows


def test_the_catalog_copy_matches_the_shared_catalog_where_there_is_one():
    rows = _catalog_rows()                              # fails, never skips, when the copy is missing
    if SHARED_CATALOG.exists():                         # a checkout beside the project's shared files
        assert CATALOG.read_bytes() == SHARED_CATALOG.read_bytes(), (
            f"{CATALOG} differs from {SHARED_CATALOG}: copy the shared catalog into tests/data")
    assert all(row["kind"] in registry.KINDS for row in rows), "catalog kinds must be registry kinds"


def test_registered_catalog_names_use_the_catalog_kind():
    rows = _catalog_rows()
    kind_of = {}
    for row in rows:
        kind_of.setdefault(row["name"], set()).add(row["kind"])
    for entry in registry.entries():
        if entry.name in kind_of and entry.kind not in kind_of[entry.name]:
            # the same name may exist under another kind (grpo is an advantage and a loss)
            assert any(entry.name in registry.available(k) for k in kind_of[entry.name]), entry


@pytest.mark.parametrize("name", registry.available("experiment"))
def test_every_config_field_is_documented(name):
    # each field carries a trailing "# comment" that `python -m lab config` prints beside it
    from lab.experiments import config_of, field_docs

    undocumented = [field for field, doc in field_docs(config_of(name)).items() if not doc]
    assert not undocumented, f"{name}: fields without a comment: {undocumented}"
