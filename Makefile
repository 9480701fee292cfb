# Two entry points for a fresh machine (see README.md):
#   make demo   set up .venv and run the main job on the built-in default
#   make test   set up .venv (with slicer-core for the tests) and run ruff and the whole test suite
# Each target installs what it needs itself; nothing has to be installed by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
# Elsewhere, TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU build from PyTorch's own index.
TORCH := torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test lint browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-engine: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-engine
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# The web app's tests drive Debian's headless Chromium; installed here when missing (needs root and apt-get;
# without them those tests are skipped and say why).
browser:
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
		>/dev/null; } || echo "chromium-driver is missing and cannot be installed here: the browser tests skip"

demo: $(VENV)/.installed-engine
	$(BIN)/cascade-landmarks demo --output demo-output

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output test-artifacts .pytest_cache .ruff_cache
