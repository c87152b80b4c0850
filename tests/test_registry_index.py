"""The registry index (lab/_registry_index.py): it equals what the decorators register, the CLI's
list/info/config answer from it without importing algorithms (nor torch, plotly, ipywidgets), and
a lookup imports only the module that registers the name — falling back to importing every module
when the index is stale."""
import importlib
import inspect
import json
import subprocess
import sys
import textwrap

import pytest

from lab import registry, registry_index
from lab.__main__ import main


def _python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned parsed."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_index_equals_what_the_decorators_register():
    built = registry_index.build_index()                      # imports every module (discover)
    problems = registry_index.index_differences(built, registry._index())
    assert not problems, ("lab/_registry_index.py is stale; run `python -m lab index` "
                          f"(make registry-index): {problems[:20]}")
    # and the committed file is exactly what the generator writes
    assert registry.INDEX_PATH.read_text(encoding="utf-8") == registry_index.render_index(built)
    assert sum(len(v) for v in built.values()) > 150 and len(built["experiment"]) > 30
    assert main(["index", "--check"]) == 0


def test_the_experiment_rows_in_the_index_are_those_of_the_config_classes():
    from lab.experiments import config_of, config_rows

    for name, record in registry._index()["experiment"].items():
        assert [tuple(r) for r in record["config"]] == config_rows(config_of(name)), name


def test_module_docstrings_read_from_source_equal_the_imported_ones():
    modules = sorted({rec["module"] for recs in registry._index().values() for rec in recs.values()})
    assert len(modules) > 100
    for module in modules:
        doc = inspect.getdoc(importlib.import_module(module)) or ""
        assert registry._docstring_from_source(module) == doc, module


def test_write_index_writes_the_rendered_index(tmp_path):
    path = registry_index.write_index(tmp_path / "index.py")
    namespace = {}
    exec(path.read_text(encoding="utf-8"), namespace)
    assert namespace["INDEX"] == registry_index.build_index()


def test_listing_and_describing_import_no_algorithm_and_no_torch():
    out = _python("""
        import io, json, sys, contextlib
        from lab.__main__ import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            codes = [main(["list"]), main(["info", "optimizer", "lion"]),
                     main(["config", "moe_transformer"]), main(["list", "experiment"])]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "plotly", "ipywidgets"))
        algos = sorted(m for m in sys.modules if m.startswith("lab.") and m not in (
            "lab.history", "lab.registry", "lab._registry_index", "lab.experiments",
            "lab.experiments._base", "lab.progress", "lab.__main__"))
        print(json.dumps({"codes": codes, "heavy": heavy[:5], "algos": algos, "out": buf.getvalue()}))
    """)
    assert out["codes"] == [0, 0, 0, 0]
    assert out["heavy"] == [] and out["algos"] == []
    assert "Symbolic Discovery of Optimization Algorithms" in out["out"]
    assert "every coordinate moves by exactly eta" in out["out"]          # lion's module docstring
    assert "n_experts" in out["out"] and "experts per layer" in out["out"]  # moe_transformer's config


def test_import_lab_imports_no_plotting_or_widget_library():
    out = _python("""
        import json, sys
        import lab, lab.experiments
        from lab import registry, registry_index
        registry.available("optimizer"); registry.entries()
        print(json.dumps(sorted(m for m in sys.modules
                                if m.split(".")[0] in ("plotly", "ipywidgets", "torch"))[:5]))
    """)
    assert out == []


def test_get_imports_only_the_module_that_registers_the_name():
    out = _python("""
        import json, sys
        from lab import registry, registry_index
        lion = registry.get("optimizer", "lion")
        entry = registry.info("experiment", "moe_transformer")     # from the index: not loaded
        before = "lab.experiments.moe" in sys.modules
        obj = entry.obj                                            # loads it
        print(json.dumps({"lion": lion.__module__, "before": before,
                          "after": "lab.experiments.moe" in sys.modules, "obj": obj.__name__,
                          "discovered": registry._DISCOVERED,
                          "others": sorted(m for m in sys.modules if m.startswith("lab.experiments.")
                                           and m not in ("lab.experiments._base", "lab.experiments.moe"))}))
    """)
    assert out["lion"] == "lab.optim.lion" and out["obj"] == "moe_transformer"
    assert out["before"] is False and out["after"] is True
    assert out["discovered"] is False and out["others"] == []


def test_an_index_entry_equals_the_registered_one_and_loads_the_same_object():
    registry.discover()
    for kind in ("optimizer", "experiment", "policy_loss"):
        for name, rec in registry._index()[kind].items():
            from_index = registry.Entry(kind, name, registry._NOT_LOADED, rec["paper"], rec["arxiv"],
                                        rec["summary"], rec["module"])
            assert from_index == registry._REGISTRY[kind][name]
            assert from_index.obj is registry._REGISTRY[kind][name].obj


def test_a_stale_index_still_finds_every_name(monkeypatch):
    registry.discover()
    index = {kind: dict(records) for kind, records in registry._index().items()}
    lion = index["optimizer"]["lion"]
    index["optimizer"]["lion"] = {**lion, "module": "lab.optim.adabelief"}   # wrong module
    del index["optimizer"]["adamp"]                                          # a name it lacks
    monkeypatch.setattr(registry, "_INDEX", index)
    assert registry.get("optimizer", "lion").__name__ == "Lion"
    assert registry.info("optimizer", "adamp").obj.__name__ == "AdamP"
    with pytest.raises(KeyError, match="valid names: .*adabelief"):
        registry.get("optimizer", "no_such_optimizer")


def test_without_an_index_every_lookup_imports_everything(monkeypatch):
    monkeypatch.setattr(registry, "_INDEX", {})
    registry.discover()
    assert "lion" in registry.available("optimizer")
    assert registry.info("optimizer", "lion").module == "lab.optim.lion"
