# trainlab: `make lab` opens the lessons, `make test` runs every test (notebooks included).
#   TORCH_SPEC  the torch requirement installed when the venv has none (default: a CPU build here)
#   NO_BROWSER=1  start JupyterLab without opening a browser;  PORT=8888  its port
#   PYTEST_ARGS   extra arguments for pytest (e.g. -k notebooks)

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PORT       ?= 8888
JOBS       ?= auto
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip --disable-pip-version-check

.PHONY: lab test bench venv torch install-notebooks install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)

# torch first, and only when the venv has none: a plain `torch` requirement would otherwise pull a
# multi-GB CUDA build. Override with e.g. `make test TORCH_SPEC="torch==2.5.1"`.
torch: venv
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"

install-notebooks: torch
	$(PIP) install --quiet -e ".[notebooks]"

install-dev: torch
	$(PIP) install --quiet -e ".[dev]"

lab: install-notebooks
	$(PY) -m jupyter lab notebooks/00_tour.ipynb --port=$(PORT) \
		$(if $(NO_BROWSER),--no-browser,) $(if $(filter 0,$(shell id -u)),--allow-root,) \
		--ServerApp.root_dir="$(CURDIR)"

test: install-dev
	$(PY) -m pytest -n $(JOBS) $(PYTEST_ARGS)

bench: install-dev
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
