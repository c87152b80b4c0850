"""The README tells the truth: its API tour runs, its quick start is the two commands, its
notebook map lists exactly the notebooks there are, and .ci/run calls its test command."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title):
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_api_tour_runs():
    blocks = re.findall(r"```python\n(.*?)```", _section("API tour"), re.S)
    assert blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["history"]["xy"].shape == (201, 2)
    assert namespace["fig"].data


def test_quick_start_is_the_two_commands_and_ci_runs_the_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", _section("Quick start"), re.S)
    assert blocks[0].split("\n")[:2] == ["make lab", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_notebook_map_lists_every_notebook():
    listed = set(re.findall(r"notebooks/([\w-]+\.ipynb)", _section("The lessons")))
    present = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert listed == present


def test_notebook_map_lists_every_claim_as_the_claims_state_it():
    # the lesson map's claims are generated from lab.claims (python -m lab.claims readme)
    from lab.claims import all_claims, readme_map

    text = (ROOT / "README.md").read_text()
    assert readme_map(text) == text, "README lesson map is stale: run `python -m lab.claims readme`"
    section = _section("The lessons")
    assert all(c.text.replace("|", r"\|").replace("\n", " ") in section for c in all_claims())
