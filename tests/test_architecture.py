"""The house mirrors the catalog, and imports go one way.

- Every catalog kind has one home folder (``KIND_HOME``): each registered algorithm of that kind
  is defined in a module under it (the exceptions are named, with the reason).
- No import cycle between modules of ``lab`` and ``toy_envs``: every import counts, at module
  level or inside a function, so a lazy import cannot hide a cycle.
- Figure builders (``lab.viz``, except the panel layer) import no experiment: they read
  Histories and plain data; the experiments may name their default figure.
"""
import ast
import csv
import pathlib

import pytest

from lab import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
CATALOG = ROOT / "tests" / "data" / "catalog.tsv"

KIND_HOME = {
    "optimizer": "lab.optim", "distributed": "lab.distributed", "layer": "lab.models",
    "solver": "lab.solvers", "peft": "lab.peft", "merge": "lab.merge", "advantage": "lab.rl",
    "policy_loss": "lab.rl", "preference_loss": "lab.preference", "sampler": "lab.sampling",
    "reward": "lab.rewards", "aggregator": "lab.federated", "balancer": "lab.moe",
    "flow_loss": "lab.flow", "continual": "lab.continual", "experiment": "lab.experiments",
    "env": "toy_envs",
}
"""Catalog kind -> the package its algorithms live in (README, "Where things live")."""

PANEL_LAYER = {"lab.viz.panel", "lab.viz.lessons"}
"""Modules of lab.viz that build live panels and so may name experiments."""


def _module_files():
    for base in ("lab", "toy_envs"):
        for path in sorted((ROOT / base).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


MODULES = dict(_module_files())


def _imports(name, path):
    """Every lab/toy_envs module that ``name`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_package_edge(a, b):
    # a package's __init__ re-exporting its submodules, and a submodule importing a sibling
    # through the package, is the package itself, not a cycle between two lessons
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_cycle_between_modules():
    graph = {a: {b for b in bs if not _is_package_edge(a, b)} for a, bs in GRAPH.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module -> module, any import counts):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["lab.viz.optim"].add("lab.experiments.optimizers")     # the kind of edge that was there
    assert any({"lab.viz.optim", "lab.experiments.optimizers"} <= set(c) for c in _cycles(graph))


def test_figure_builders_import_no_experiment():
    offenders = {name: sorted(t for t in targets if t.startswith("lab.experiments"))
                 for name, targets in GRAPH.items()
                 if name.startswith("lab.viz") and name not in PANEL_LAYER}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"figure builders must read Histories, not experiments: {offenders}"


def test_catalog_copy_is_present_and_matches_the_shared_one():
    assert CATALOG.exists(), "tests/data/catalog.tsv (the catalog of algorithms) is missing"
    shared = ROOT.parent / "shared" / "catalog.tsv"
    if shared.exists():
        assert CATALOG.read_text() == shared.read_text(), "tests/data/catalog.tsv is stale"


CATALOG_ROWS = list(csv.DictReader(open(CATALOG), delimiter="\t")) if CATALOG.exists() else []


@pytest.mark.parametrize("row", CATALOG_ROWS, ids=lambda r: f"{r['kind']}/{r['name']}")
def test_catalog_kind_tells_the_folder(row):
    entry = registry.info(row["kind"], row["name"])
    home = KIND_HOME[row["kind"]]
    assert entry.module == home or entry.module.startswith(home + "."), (
        f"{row['kind']}/{row['name']} is defined in {entry.module}, expected under {home}")
