"""Claims: what each lesson says it shows, as data, with the runs that check it.

A lesson's headline sentence and the evidence for it live in one object, so that the text in the
notebook and the test in CI cannot drift apart::

    Claim(
        notebook="06_policy_gradients", panel="training",
        text="With several epochs per batch the ratio leaves 1, and a tight ε clips tokens.",
        experiment="policy_optimization",
        config={"epochs": 4, "clip_eps_low": 0.05, "clip_eps_high": 0.05},   # the effect shows
        control={"epochs": 1},                      # on top of config: the effect disappears
        holds=lambda h: h["clip_frac"].mean() > 0.02,
        control_text="one epoch: every ratio is exactly 1, nothing is clipped",
    )

- ``config`` overrides the experiment's default config (or ``base``); ``control`` overrides
  ``config`` again. An empty ``config`` means the claim holds at the defaults, which is what a
  lesson's panel opens on.
- ``variants`` (optional) runs one History per label, each with its own overrides on top, and
  hands ``holds`` the labelled :class:`~lab.history.Runs` (e.g. ``{"fedavg": {"algorithm":
  "fedavg"}, "fedau": {"algorithm": "fedau"}}``).
- ``experiment`` is a registered experiment name, or any ``callable(cfg) -> History | Runs``
  with ``base`` (a config instance) given.
- Seeds are always ``0 .. seeds-1`` written into ``cfg.<seed_field>``; nobody picks them
  (``seed_field=None`` for a deterministic experiment without a seed: it runs once). A claim
  holds when ``holds`` is true on a strict majority of the seeds with ``config`` and on at most
  a minority with the control (:meth:`Claim.check`). The ``claims`` tests (``pytest -m
  claims``) run every claim this way.
- ``reproduced=False`` marks a sentence that reports a paper's claim *not* reproducing on the
  lab's toys: the text then says what does happen, and ``holds``/``control`` check that.

Claims are declared next to their experiment, as a module-level ``CLAIMS`` list in a module of
:mod:`lab.experiments`; :func:`all_claims` collects them, :func:`claims_for` selects one
lesson's, :func:`show` renders their sentences in a notebook, and :meth:`Claim.presets` gives a
panel's "the paper's effect" / "the control" presets.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from lab.history import History, Runs

EFFECT = "the paper's effect"
CONTROL = "the control"


@dataclass(frozen=True)
class ClaimResult:
    """The predicate's value per seed, with the claim's config and with its control."""

    claim: "Claim"
    effect: tuple[bool, ...]
    control: tuple[bool, ...]

    @property
    def effect_holds(self) -> bool:
        return 2 * sum(self.effect) > len(self.effect)

    @property
    def control_holds(self) -> bool:
        return 2 * sum(self.control) > len(self.control)

    @property
    def ok(self) -> bool:
        """True when the effect shows on a majority of seeds and the control removes it."""
        return self.effect_holds and not self.control_holds

    def __str__(self) -> str:
        return (f"{self.claim.id}: effect on {sum(self.effect)}/{len(self.effect)} seeds, "
                f"control on {sum(self.control)}/{len(self.control)}")


@dataclass(frozen=True)
class Claim:
    """One headline sentence of a lesson, with the runs that show it and the control that hides it."""

    notebook: str                      # e.g. "06_policy_gradients"
    panel: str                         # the panel of that notebook, e.g. "training"
    text: str                          # the sentence the notebook shows
    experiment: str | Callable[[Any], History | Runs]
    holds: Callable[[History | Runs], bool]
    config: Mapping[str, Any] = field(default_factory=dict)
    control: Mapping[str, Any] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] | None = None
    base: Any = None                   # config instance; required for a callable experiment
    seeds: int = 3
    seed_field: str | None = "seed"    # None: a deterministic experiment, run once
    control_text: str = ""             # one line: what the control changes and why it hides it
    reproduced: bool = True            # False: the text reports a paper claim that did not hold
    name: str = ""                     # short id within the panel (defaults to its position)

    def __post_init__(self):
        if not isinstance(self.notebook, str) or not self.notebook[:2].isdigit():
            raise ValueError(f"notebook must be a notebook stem such as '06_policy_gradients', "
                             f"got {self.notebook!r}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("text must be a non-empty sentence")
        if not callable(self.holds):
            raise TypeError("holds must be a callable over a History or Runs")
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 1:
            raise ValueError(f"seeds must be a positive int, got {self.seeds!r}")
        if not self.control:
            raise ValueError(f"claim {self.text!r}: control must change at least one setting")
        if callable(self.experiment) and not isinstance(self.experiment, str) and self.base is None:
            raise ValueError("base (a config instance) is required when experiment is a callable")

    # ------------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return f"{self.notebook}.{self.panel}" + (f".{self.name}" if self.name else "")

    @property
    def seed_count(self) -> int:
        """Seeds the check runs: ``seeds``, or 1 for a deterministic experiment."""
        return 1 if self.seed_field is None else self.seeds

    def base_config(self) -> Any:
        """The config the overrides apply to: ``base``, or the experiment's default config."""
        if self.base is not None:
            return self.base
        from lab.experiments._base import config_of

        return config_of(self.experiment)()

    def configured(self, which: str = "effect", seed: int | None = None) -> Any:
        """The config instance of the effect (``which="effect"``) or of the control."""
        from lab.experiments._base import replace

        if which not in ("effect", "control"):
            raise ValueError(f"which must be 'effect' or 'control', got {which!r}")
        changes = dict(self.config)
        if which == "control":
            changes.update(self.control)
        if seed is not None and self.seed_field is not None:
            changes[self.seed_field] = seed
        return replace(self.base_config(), **changes)

    def run(self, which: str = "effect", seed: int = 0) -> History | Runs:
        """Run the claim's experiment (every variant) once with ``seed``."""
        from lab.experiments._base import replace, run as run_experiment

        cfg = self.configured(which, seed)

        def one(c):
            if isinstance(self.experiment, str):
                return run_experiment(self.experiment, c)
            return self.experiment(c)

        if not self.variants:
            return one(cfg)
        return Runs({label: one(replace(cfg, **changes)) for label, changes in self.variants.items()})

    def check(self, seeds: int | None = None) -> ClaimResult:
        """Evaluate ``holds`` on seeds ``0..n-1``, with the config and with the control."""
        n = self.seed_count if seeds is None else seeds
        effect = tuple(bool(self.holds(self.run("effect", s))) for s in range(n))
        control = tuple(bool(self.holds(self.run("control", s))) for s in range(n))
        return ClaimResult(self, effect, control)

    def presets(self) -> dict[str, dict[str, Any]]:
        """``{"the paper's effect": overrides, "the control": overrides}`` for a panel's presets."""
        return {EFFECT: dict(self.config), CONTROL: {**self.config, **self.control}}

    def markdown(self) -> str:
        """The sentence as the notebook shows it (with the control and seed count)."""
        tag = "**Claim**" if self.reproduced else "**Not reproduced here**"
        control = f" *Control:* {self.control_text}." if self.control_text else ""
        seeds = f" (checked on {self.seed_count} seeds)" if self.seed_count > 1 else ""
        return f"{tag}{seeds}: {self.text}{control}"


def all_claims() -> list[Claim]:
    """Every claim declared in a ``CLAIMS`` list of a :mod:`lab.experiments` module."""
    import lab.experiments as experiments

    found: list[Claim] = []
    for mod in pkgutil.iter_modules(experiments.__path__, prefix="lab.experiments."):
        module = importlib.import_module(mod.name)
        for claim in getattr(module, "CLAIMS", ()):
            if not isinstance(claim, Claim):
                raise TypeError(f"{mod.name}.CLAIMS holds a {type(claim).__name__}, not a Claim")
            found.append(claim)
    ids = [c.id for c in found]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"claim ids must be unique; give these a name=: {', '.join(dup)}")
    return found


def claims_for(notebook: str, panel: str | None = None) -> list[Claim]:
    """The claims of one notebook (by stem), optionally of one of its panels."""
    chosen = [c for c in all_claims() if c.notebook == notebook and (panel is None or c.panel == panel)]
    if not chosen:
        known = sorted({(c.notebook, c.panel) for c in all_claims()})
        raise KeyError(f"no claims for notebook {notebook!r}" + (f", panel {panel!r}" if panel else "")
                       + f"; known: {', '.join(f'{n}/{p}' for n, p in known)}")
    return chosen


def markdown(claims: Sequence[Claim]) -> str:
    """Markdown list of the claims' sentences."""
    return "\n".join(f"- {c.markdown()}" for c in claims)


def show(notebook: str, panel: str | None = None):
    """Display a lesson's (or one panel's) claims as Markdown in a notebook; returns the object."""
    from IPython.display import Markdown

    return Markdown(markdown(claims_for(notebook, panel)))


def presets(claims: Sequence[Claim], extra: Mapping[str, Mapping[str, Any]] | None = None
            ) -> dict[str, dict[str, Any]]:
    """A panel's presets from its claims: the first claim's effect and control, then each further
    claim's as ``"<name>: the paper's effect"``, then ``extra`` named scenarios."""
    out: dict[str, dict[str, Any]] = {}
    for i, claim in enumerate(claims):
        if i == 0:                       # the panel opens on this claim's config: overrides suffice
            items = claim.presets().items()
        else:                            # every field, so nothing of the first claim's config lingers
            skip = {claim.seed_field, "device"}
            items = [(key, {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in skip})
                     for key, cfg in ((EFFECT, claim.configured("effect")), (CONTROL, claim.configured("control")))]
        for key, overrides in items:
            label = key if i == 0 else f"{claim.name or i}: {key}"
            out[label] = overrides
    for key, overrides in (extra or {}).items():
        out[key] = dict(overrides)
    return out


def table(claims: Sequence[Claim] | None = None) -> str:
    """A Markdown table of claims (notebook, panel, sentence) for the README's lesson map."""
    rows = ["| notebook | panel | claim |", "| --- | --- | --- |"]
    for c in claims if claims is not None else all_claims():
        text = (c.text if c.reproduced else f"not reproduced: {c.text}").replace("|", r"\|")
        rows.append(f"| `{c.notebook}` | {c.panel} | {text} |")
    return "\n".join(rows)


def readme_map(text: str, claims: Sequence[Claim] | None = None) -> str:
    """``text`` (the README) with each lesson-map row's claims rewritten from the claims' data.

    A row of the ``<!-- notebook-map -->`` table is ``| [`NN_name`](...) | what you see<br>**Claim:**
    ... | algorithms |``; everything from the first ``<br>**`` of the middle cell on is replaced by
    the notebook's claims, so the README cannot drift from what the claims test checks.
    """
    claims = list(claims if claims is not None else all_claims())
    start, end = "<!-- notebook-map -->", "<!-- /notebook-map -->"
    if start not in text or end not in text:
        raise ValueError("the README has no <!-- notebook-map --> section")
    head, rest = text.split(start, 1)
    table, tail = rest.split(end, 1)
    lines = []
    for line in table.split("\n"):
        m = re.match(r"^\| \[`(\d\d_[\w-]+)`\]", line)
        if m:
            cells = line.split(" | ")
            what = cells[1].split("<br>**", 1)[0]
            notes = [("**Claim:** " if c.reproduced else "**Not reproduced here:** ")
                     + c.text.replace("|", "\\|").replace("\n", " ") for c in claims if c.notebook == m.group(1)]
            cells[1] = "<br>".join([what, *notes])
            line = " | ".join(cells)
        lines.append(line)
    return head + start + "\n".join(lines) + end + tail


def as_dict(claim: Claim) -> dict[str, Any]:
    """A JSON-friendly summary (for reports)."""
    return {"id": claim.id, "text": claim.text, "config": dict(claim.config),
            "control": dict(claim.control), "seeds": claim.seed_count, "reproduced": claim.reproduced,
            "variants": {k: dict(v) for k, v in (claim.variants or {}).items()}}


__all__ = ["Claim", "ClaimResult", "all_claims", "claims_for", "show", "presets", "markdown", "readme_map",
           "table", "as_dict", "EFFECT", "CONTROL"]


if __name__ == "__main__":   # python -m lab.claims readme: rewrite the README's lesson-map claims
    import pathlib
    import sys

    if sys.argv[1:] != ["readme"]:
        raise SystemExit("usage: python -m lab.claims readme")
    path = pathlib.Path("README.md")
    from lab.claims import readme_map as _readme_map    # the package's module, not this __main__ copy

    path.write_text(_readme_map(path.read_text()))
