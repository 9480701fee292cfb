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

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-engine: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-engine
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed-engine
	$(BIN)/cascade-landmarks demo --output demo-output

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
