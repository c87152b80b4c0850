"""``python -m lab.distributed.train`` launched through torchrun trains the digits MLP and writes a History."""
import os
import pathlib
import subprocess
import sys

import pytest

from lab.history import History

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _torchrun() -> list[str]:
    exe = pathlib.Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_torchrun_cli_trains_the_digits_mlp(tmp_path):
    out = tmp_path / "edit.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = _torchrun() + ["--standalone", "--nproc_per_node", "2", "-m", "lab.distributed.train", "--algorithm", "edit",
                         "--workers", "2", "--rounds", "4", "--sync-every", "8", "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    h = History.from_json(out)
    assert h.meta["engine"] == "torch.distributed" and h.meta["workers"] == 2 and h.meta["backend"] == "gloo"
    assert len(h) == 5 and h["steps"].tolist() == [[8.0, 8.0]] * 4
    assert h["accuracy"][-1] > h["accuracy"][0] + 0.3  # from chance (~0.1) to well above it


def test_cli_refuses_a_world_size_that_does_not_match(monkeypatch, capsys):
    from lab.distributed import train

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert train.main(["--workers", "2", "--rounds", "1"]) == 2
    assert "--workers 2 but torchrun started 3" in capsys.readouterr().err


def test_cli_bad_arguments():
    from lab.distributed import train

    with pytest.raises(SystemExit):
        train.parse_args(["--workers", "0"])
