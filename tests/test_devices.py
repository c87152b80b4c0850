"""Every experiment runs on every available device, and creates nothing on the wrong one.

The guard: the experiment runs with ``device="cpu"`` inside ``with torch.device("meta")``. A
tensor, model or generator the experiment creates without naming its device then lands on the
meta device, and the first operation mixing it with the run's real tensors fails. So a pass
means every tensor of the run was placed on ``cfg.device`` explicitly (results reach the History
through ``.cpu()``/``.item()`` at the end).

Every experiment passes the guard now (``NOT_YET`` is empty); an experiment added without device
plumbing fails here. An entry in ``NOT_YET`` is a strict xfail, so the set can only shrink.
"""
import dataclasses

import pytest
import torch

from lab import registry
from lab.experiments import config_of, run

NAMES = registry.available("experiment")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

NOT_YET: set[str] = set()   # every experiment runs on cfg.device; a new one must too


def _params(names):
    mark = pytest.mark.xfail(strict=True, reason="not yet moved onto cfg.device")
    return [pytest.param(n, marks=mark) if n in NOT_YET else n for n in names]


def _smoke(name):
    fn = registry.get("experiment", name)
    return {**getattr(fn, "smoke", {})}


def _has_device(name):
    return "device" in {f.name for f in dataclasses.fields(config_of(name))}


@pytest.mark.parametrize("name", _params(NAMES))
def test_every_experiment_has_a_device_field_defaulting_to_auto(name):
    assert _has_device(name)
    assert config_of(name)().device == "auto"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", _params(NAMES))
def test_smallest_config_runs_on_each_device(name, device):
    history = run(name, **_smoke(name), device=device)
    assert len(history.rows) > 0 or history.artifacts


@pytest.mark.parametrize("name", _params(NAMES))
def test_no_tensor_is_created_off_the_configured_device(name):
    with torch.device("meta"):
        run(name, **_smoke(name), device="cpu")


def test_resolve_device():
    from lab.experiments import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("gpu0")
    with pytest.raises(TypeError, match="device"):
        resolve_device(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
