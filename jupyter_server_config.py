"""Jupyter server config of the lab (``make lab`` puts this folder on ``JUPYTER_CONFIG_PATH``).

The lessons in ``notebooks/`` are committed without outputs. JupyterLab saves (and autosaves) the
notebook you work in, outputs and widget state included: that would make the tracked files dirty
and several MB large, and on reopening show "Error displaying widget: model not found" for
widgets whose kernel is gone. The pre-save hook below strips, from every notebook saved under a
``notebooks/`` folder, the code cells' outputs and execution counts and the notebook's saved
widget state, so the file on disk stays the clean lesson. Notebooks saved elsewhere (a copy in
your home folder, a scratch notebook at the root) keep their outputs.
"""
from __future__ import annotations

import pathlib


def is_lesson(path: str, root_dir: str = "") -> bool:
    """True for a notebook inside a ``notebooks/`` folder (``path`` relative to the server root)."""
    parts = pathlib.PurePosixPath(path.replace("\\", "/")).parts
    if not parts or not parts[-1].endswith(".ipynb"):
        return False
    folders = parts[:-1] if len(parts) > 1 else (pathlib.Path(root_dir).name,)
    return bool(folders) and folders[-1] == "notebooks"


def strip_lesson(model: dict, path: str, contents_manager=None, **kwargs) -> None:
    """Pre-save hook: drop outputs, execution counts and widget state of a lesson notebook."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    root = getattr(contents_manager, "root_dir", "") or ""
    if not is_lesson(path, root):
        return
    notebook = model["content"]
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        metadata = cell.get("metadata", {})
        metadata.pop("execution", None)              # JupyterLab's "record timing" stamps
    notebook.get("metadata", {}).pop("widgets", None)


c = get_config()  # noqa: F821 - provided by traitlets when the server loads this file
c.FileContentsManager.pre_save_hook = strip_lesson      # LargeFileManager (JupyterLab's) derives from it
