# trainlab: `make lab` opens the lessons, `make test` runs every test (notebooks included).
#   TORCH_SPEC  the torch requirement installed when the venv has none (default: a CPU build here)
#   NO_BROWSER=1  start JupyterLab without opening a browser;  PORT=8888  its port
#   PYTEST_ARGS   extra arguments for pytest (e.g. -k notebooks)
#   `make registry-index` regenerates lab/_registry_index.py after an algorithm is added or renamed.
#   The browser test (tests/test_browser.py) drives Debian's chromium with playwright; `make test`
#   installs chromium with apt-get when it is missing and this runs as root (as in CI). Set
#   TRAINLAB_SKIP_BROWSER=1 to skip that test on a machine without chromium.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PORT       ?= 8888
JOBS       ?= auto
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip --disable-pip-version-check

.PHONY: lab test bench registry-index venv torch install-notebooks install-dev install-browser clean

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

# chromium for the browser test: Debian's package (playwright's own browser downloads are not used).
# Only as root with apt-get; otherwise the test says how to install it. The log goes to test-artifacts/.
CHROMIUM_LOG := test-artifacts/chromium-install.log
install-browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  mkdir -p test-artifacts; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get) for the browser test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	      >$(CHROMIUM_LOG) 2>&1 || echo "chromium could not be installed: see $(CHROMIUM_LOG)"; \
	  else \
	    echo "chromium is missing and this is not root with apt-get: install it (apt-get install chromium)" \
	      | tee $(CHROMIUM_LOG); \
	  fi; }

# JUPYTER_CONFIG_PATH adds this folder's jupyter_server_config.py: saving a lesson strips its outputs.
lab: install-notebooks
	JUPYTER_CONFIG_PATH="$(CURDIR)$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" \
	$(PY) -m jupyter lab notebooks/00_tour.ipynb --port=$(PORT) \
		$(if $(NO_BROWSER),--no-browser,) $(if $(filter 0,$(shell id -u)),--allow-root,) \
		--ServerApp.root_dir="$(CURDIR)"

test: install-dev install-browser
	$(PY) -m pytest -n $(JOBS) $(PYTEST_ARGS)

bench: install-dev
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# lab/_registry_index.py: what the @register decorators register, so that `python -m lab list`
# imports no algorithm. Rerun after adding or renaming an algorithm (tests/test_registry_index.py
# fails until then).
registry-index: torch
	PYTHONPATH=$(CURDIR) $(PY) -m lab index

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
