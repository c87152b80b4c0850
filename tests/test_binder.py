"""The Binder image must install every runtime dependency of the package, torch as a CPU build."""
import pathlib
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch-cpu"}  # PyPI name -> conda-forge name in the binder spec


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_every_runtime_dependency_is_in_the_binder_spec():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = (ROOT / "binder" / "environment.yml").read_text()
    listed = {_name(line.strip()[2:]) for line in env.splitlines() if line.strip().startswith("- ")}
    missing = [d for d in map(_name, deps) if CONDA_NAMES.get(d, d) not in listed]
    assert not missing, f"binder/environment.yml lacks {missing}"


def test_binder_installs_the_package_and_uses_cpu_torch():
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install" in post and " -e ." in post
    env = (ROOT / "binder" / "environment.yml").read_text()
    assert "pytorch-cpu" in env and "cuda" not in env.lower().replace("no cuda", "")
