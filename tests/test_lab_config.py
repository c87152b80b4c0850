"""``jupyter_server_config.py``: saving a lesson through Jupyter's contents manager strips it."""
import asyncio
import copy
import pathlib

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config():
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("jupyter_server_config.py", path=str(ROOT)).load_config()


def _notebook_with_outputs() -> dict:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# lesson"),
                nbformat.v4.new_code_cell("1 + 1", execution_count=3,
                                          outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                                                          execution_count=3)])]
    nb.cells[1].metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": {}}}}
    return nb


def _read(path: pathlib.Path):
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("manager", ["FileContentsManager", "AsyncLargeFileManager"])
def test_saving_a_lesson_strips_outputs_and_widget_state(tmp_path, manager):
    from jupyter_server.services.contents import filemanager, largefilemanager

    cls = getattr(filemanager, manager, None) or getattr(largefilemanager, manager)
    cm = cls(root_dir=str(tmp_path), config=_config())
    (tmp_path / "notebooks").mkdir()
    nb = _notebook_with_outputs()

    def save(path):
        result = cm.save({"type": "notebook", "content": copy.deepcopy(nb)}, path)
        if asyncio.iscoroutine(result):
            asyncio.run(result)

    save("notebooks/lesson.ipynb")
    save("scratch.ipynb")
    lesson, scratch = _read(tmp_path / "notebooks" / "lesson.ipynb"), _read(tmp_path / "scratch.ipynb")
    code = lesson.cells[1]
    assert code.outputs == [] and code.execution_count is None and "execution" not in code.metadata
    assert "widgets" not in lesson.metadata and lesson.cells[0].source == "# lesson"
    assert code.source == "1 + 1", "the lesson's code stays"
    # a notebook outside notebooks/ keeps its outputs: the hook, not the save, removes them
    assert scratch.cells[1].outputs and scratch.cells[1].execution_count == 3 and "widgets" in scratch.metadata


def test_a_server_started_in_the_notebooks_folder_strips_too(tmp_path):
    from jupyter_server.services.contents.filemanager import FileContentsManager

    root = tmp_path / "notebooks"
    root.mkdir()
    cm = FileContentsManager(root_dir=str(root), config=_config())
    cm.save({"type": "notebook", "content": _notebook_with_outputs()}, "00_tour.ipynb")
    assert _read(root / "00_tour.ipynb").cells[1].outputs == []


def _labextension(name: str) -> dict:
    import json

    from jupyter_core.paths import jupyter_path

    for folder in jupyter_path("labextensions"):
        path = pathlib.Path(folder) / name / "package.json"
        if path.exists():
            return json.loads(path.read_text())
    pytest.fail(f"labextension {name} is not installed")


def test_the_plotly_labextension_warning_is_what_pyproject_documents():
    """`jupyter labextension list` marks jupyterlab-plotly 5.24 "X" because of its declared lumino 1
    ranges; pyproject.toml explains why that is harmless. If plotly or the widget manager changes,
    this fails, so that the note is revisited (and the browser test re-checks the rendering)."""
    import plotly

    plotly_ext = _labextension("jupyterlab-plotly")
    manager = _labextension("@jupyter-widgets/jupyterlab-manager")
    assert plotly.__version__.startswith("5.") and plotly_ext["version"] == plotly.__version__
    deps = plotly_ext["dependencies"]
    assert deps["@lumino/widgets"].startswith("^1") and deps["@lumino/messaging"].startswith("^1")
    assert set(plotly_ext["jupyterlab"]["sharedPackages"]) == {"@jupyter-widgets/base"}
    # the widget base that JupyterLab 4's widget manager provides lies in plotly's declared range
    assert deps["@jupyter-widgets/base"] == ">=2.0.0 <7.0.0"
    provided_major = int(manager["dependencies"]["@jupyter-widgets/base"].lstrip("^~").split(".")[0])
    assert 2 <= provided_major < 7
