"""The command line, run as a subprocess: list, info, config, run (+ --json/--html), errors."""
import subprocess
import sys

import pytest

from lab.history import History


def _lab(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_list_and_info():
    out = _lab("list", "optimizer").stdout
    assert "adamw" in out and "Decoupled Weight Decay Regularization" in out and "1711.05101" in out
    out = _lab("info", "optimizer", "adam").stdout
    assert "Adam: A Method for Stochastic Optimization" in out and "lab.optim.baselines" in out
    proc = _lab("info", "optimizer", "adma", check=False)
    assert proc.returncode != 0 and "valid names" in proc.stderr


def test_config_lists_fields_with_types():
    out = _lab("config", "optimizer_on_surface").stdout
    assert "lr" in out and "float" in out and "rosenbrock" in out
    # with each field's comment from the config's source
    line = next(line for line in _lab("config", "policy_optimization").stdout.splitlines()
                if line.startswith("entropy_coef"))
    assert "= 0.0" in line and "entropy bonus" in line


def test_run_parses_values_by_field_type_and_writes_json_and_html(tmp_path):
    out_json, out_html = tmp_path / "h.json", tmp_path / "h.html"
    proc = _lab("run", "optimizer_on_surface", "--set", "steps=7", "--set", "lr=0.001",
                "--set", "optimizer=sgd(momentum=0.5)", "--set", "x0=none", "--set", "surface=beale",
                "--json", str(out_json), "--html", str(out_html))
    assert "8 rows" in proc.stdout
    h = History.from_json(out_json)
    assert h.meta["config"]["steps"] == 7 and h.meta["config"]["optimizer"] == "sgd(momentum=0.5)"
    assert h.meta["config"]["x0"] is None and h.meta["surface"] == "beale"
    assert "plotly" in out_html.read_text().lower()


@pytest.mark.parametrize("args,message", [
    (["--set", "lrr=1"], "valid keys: optimizer"),
    (["--set", "steps=many"], "bad value for steps"),
    (["--set", "steps"], "key=value"),
])
def test_run_errors(args, message):
    proc = _lab("run", "optimizer_on_surface", *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr


def test_progress_bar_appears_only_past_the_delay():
    proc = _lab("run", "optimizer_on_surface", "--set", "steps=200", "--progress-delay", "0")
    assert "it/s" in proc.stderr or "%|" in proc.stderr
    proc = _lab("run", "optimizer_on_surface", "--set", "steps=5", "--progress-delay", "60")
    assert "%|" not in proc.stderr


@pytest.mark.parametrize("experiment,setting,message", [
    ("optimizer_on_surface", "lr=nan", "error: lr must be a finite number, got nan"),
    ("digits_mlp", "seed=-1", "error: seed must be a non-negative int, got -1"),
])
def test_a_bad_value_is_one_error_line_without_traceback(experiment, setting, message):
    proc = _lab("run", experiment, "--set", setting, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message and "Traceback" not in proc.stderr
