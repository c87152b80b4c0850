"""The experiment contract and the first experiment, optimizer_on_surface."""
import dataclasses
from typing import Literal

import numpy as np
import pytest

from lab.experiments import config_of, parse_value, run, sweep
from lab.experiments.surfaces import SurfaceConfig
from lab.history import History, Runs


def test_run_fills_meta_and_records_the_trajectory():
    h = run("optimizer_on_surface", surface="quadratic", optimizer="sgd", lr=0.01, steps=20)
    assert isinstance(h, History)
    assert h.meta["experiment"] == "optimizer_on_surface"
    assert h.meta["config"]["lr"] == 0.01 and h.meta["wall_time"] > 0
    assert h["xy"].shape == (21, 2) and len(h["loss"]) == 21
    # hand check of one SGD step on f = (50 x^2 + y^2) / 2 from (1.5, 1.8), lr 0.01:
    # grad = (75, 1.8) -> (1.5 - 0.75, 1.8 - 0.018)
    np.testing.assert_allclose(h["xy"][1], [0.75, 1.782])
    assert h["loss"][-1] < h["loss"][0]


def test_adam_gets_close_to_the_rosenbrock_minimum_and_sgd_momentum_on_the_quadratic():
    h = run("optimizer_on_surface", optimizer="adam", lr=0.05, steps=1500)
    assert h["distance"][-1] < 0.05
    h = run("optimizer_on_surface", surface="quadratic", optimizer="sgd(momentum=0.9)",
            lr=0.01, steps=300)
    assert h["distance"][-1] < 1e-3


def test_start_point_override_and_divergence_is_recorded():
    h = run("optimizer_on_surface", x0=0.5, y0=-0.5, steps=1)
    np.testing.assert_allclose(h["xy"][0], [0.5, -0.5])
    h = run("optimizer_on_surface", optimizer="sgd", lr=0.1, steps=100)
    assert "diverged" in h.meta


def test_sweep_gives_labelled_runs():
    runs = sweep("optimizer_on_surface", "optimizer", ["sgd", "adam"], steps=5, lr=1e-3)
    assert isinstance(runs, Runs) and list(runs) == ["sgd", "adam"]
    assert runs["adam"].meta["algorithm"] == "adam"


def test_bad_config_is_rejected():
    with pytest.raises(KeyError, match="valid fields: optimizer, surface"):
        run("optimizer_on_surface", learning_rate=0.1)
    with pytest.raises(ValueError, match="lr"):
        run("optimizer_on_surface", lr=-1.0)
    with pytest.raises(KeyError, match="valid names"):
        run("optimizer_on_surface", optimizer="nadam_typo", steps=1)
    with pytest.raises(TypeError, match="cfg must be a SurfaceConfig"):
        run("optimizer_on_surface", cfg=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SurfaceConfig().lr = 1.0
    assert config_of("optimizer_on_surface") is SurfaceConfig


@pytest.mark.parametrize("text,annotation,expected", [
    ("3", int, 3), ("0.5", float, 0.5), ("true", bool, True), ("off", bool, False),
    ("none", float | None, None), ("1.5", float | None, 1.5), ("a,b", tuple[str, ...], ("a", "b")),
    ("1, 2", tuple[int, int], (1, 2)),
    ("a(x=1, y=2), b", tuple[str, ...], ("a(x=1, y=2)", "b")), ("adam", str, "adam"), ("b", Literal["a", "b"], "b"),
])
def test_parse_value_from_field_types(text, annotation, expected):
    assert parse_value(text, annotation) == expected


@pytest.mark.parametrize("text,annotation", [
    ("x", int), ("maybe", bool), ("1,2,3", tuple[int, int]), ("c", Literal["a", "b"]),
    ("__import__('os')", float),
])
def test_parse_value_rejects_bad_text(text, annotation):
    with pytest.raises(ValueError):
        parse_value(text, annotation)


def test_field_docs_reads_trailing_comments_including_multiline_fields():
    import dataclasses

    from lab.experiments import field_docs

    @dataclasses.dataclass(frozen=True)
    class Config:
        a: int = 1  # the first
        b: tuple[str, ...] = ("x",
                              "y")  # spans two lines
        c: float = 0.5
        # a comment line of its own belongs to no field
        d: str = "#not a comment"  # the real one

    assert field_docs(Config) == {"a": "the first", "b": "spans two lines", "c": "", "d": "the real one"}


def _float_fields():
    from lab import registry
    from lab.experiments import field_types
    from lab.experiments._base import _declares_float

    for name in registry.available("experiment"):
        for field, annotation in field_types(config_of(name)).items():
            if _declares_float(annotation):
                yield name, field


FLOAT_FIELDS = list(_float_fields())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_every_float_field_of_every_experiment_rejects_non_finite_values(bad):
    assert len(FLOAT_FIELDS) > 100                      # the lab's configs hold well over 100 of them
    for name, field in FLOAT_FIELDS:
        default = getattr(config_of(name)(), field)
        value = tuple(bad for _ in default) or (bad,) if isinstance(default, tuple) else bad
        with pytest.raises(ValueError, match=f"^{field} must be a finite number"):
            run(name, **{field: value})


def field_names(name):
    return {f.name for f in dataclasses.fields(config_of(name))}


def test_seed_must_be_a_non_negative_int_for_every_experiment():
    from lab import registry

    seeded = [n for n in registry.available("experiment") if "seed" in field_names(n)]
    assert len(seeded) > 30
    for name in seeded:
        with pytest.raises(ValueError, match="^seed must be a non-negative int, got -1"):
            run(name, seed=-1)
        with pytest.raises(TypeError, match="^seed must be a non-negative int"):
            run(name, seed=1.5)
