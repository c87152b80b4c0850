"""Every algorithm module opens with the same lesson template (README, "How to add an algorithm").

The parts, in this order, each a paragraph whose first line starts with its label:

1. a one-line summary (``<Name>: <what it is>.``);
2. ``Paper:`` — the title and the arXiv id (or why there is none);
3. ``The update:`` / ``The objective:`` / ``The loss:`` / ``The estimator:`` / ``The rule:`` /
   ``The metric:`` / ``The algorithm:`` / ``The model:`` — the math, every symbol defined;
4. ``Where it departs from <parent>:`` — what differs from the parent algorithm;
5. ``Choices:`` — what the lab chose where the paper is silent (each choice tested).
"""
import importlib
import re

import pytest

from lab import registry

MODULES = sorted({e.module for e in registry.entries()
                  if e.kind != "experiment" and not e.module.startswith("lab.optim.baselines")})

LABELS = [
    ("Paper:", re.compile(r"^Paper:", re.M)),
    ("The update: (or objective/loss/estimator/rule/metric/algorithm/model)",
     re.compile(r"^The (update|objective|loss|estimator|rule|metric|algorithm|model)s?\b[^\n]*:", re.M)),
    ("Where it departs from <parent>:", re.compile(r"^Where it departs from [^\n]*:", re.M)),
    ("Choices:", re.compile(r"^Choices\b[^\n]*:", re.M)),
]

PENDING: set[str] = set()   # every algorithm module follows the template
"""Modules not yet brought to the template (the set only shrinks)."""


def template_problems(doc: str) -> list[str]:
    """What the docstring ``doc`` misses of the template, in words (empty: it follows it)."""
    doc = doc.strip("\n")
    problems = []
    first = doc.splitlines()[0] if doc else ""
    if not re.match(r"^\S[^\n]*[.:]$", first) or len(first) > 110:
        problems.append("a one-line summary ending with '.' (at most 110 characters)")
    last = -1
    for label, pattern in LABELS:
        match = pattern.search(doc)
        if not match:
            problems.append(f"a paragraph starting with {label!r}")
        elif match.start() < last:
            problems.append(f"{label!r} out of order")
        else:
            last = match.start()
    return problems


@pytest.mark.parametrize("module", MODULES)
def test_module_docstring_follows_the_template(module):
    problems = template_problems(importlib.import_module(module).__doc__ or "")
    if module in PENDING:
        assert problems, f"{module} follows the template now: remove it from PENDING"
        pytest.skip(f"not yet on the template: {problems}")
    assert not problems, f"{module}'s docstring misses: " + "; ".join(problems)


def test_the_template_check_finds_what_is_missing():
    good = ('Lion: evolved sign momentum.\n\nPaper: "Symbolic Discovery", arXiv 2302.06675.\n\n'
            "The update: theta <- theta - eta sign(c), where ...\n\n"
            "Where it departs from Adam: one moment.\n\nChoices: sign(0) = 0.\n")
    assert template_problems(good) == []
    assert template_problems(good.replace("Choices:", "Notes:")) == ["a paragraph starting with 'Choices:'"]
    swapped = good.replace("Paper:", "XPaper:").replace("Choices: sign(0) = 0.", 'Choices: x.\n\nPaper: "x"')
    assert any("out of order" in p for p in template_problems(swapped))
