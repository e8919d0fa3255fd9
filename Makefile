# The two commands: `make up` runs the local stack, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# pip must take the CPU build of torch that lies on this machine's disk, never a CUDA build.
PIP := $(BIN)/pip install --disable-pip-version-check --quiet
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: up test install lint typecheck test-fast test-stack test-infra soak clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) -e '.[local,dev,ai,infra]'
	bash infra/tools.sh
	@touch $@

install: $(VENV)/.installed

up: install
	$(BIN)/record up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/python -m pytest -p no:cacheprovider -m "not soak" --cov --cov-report=term $(PYTEST_ARGS)

# The infra suite alone, on both cores (renders under mocks are CPU-bound); checkov is slow and
# runs in make test.
test-infra: install
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 tests/infra -k "not checkov"

# Three minutes of bench/soak.py against a real `record up` (CI runs it after `make test`).
soak: install
	$(BIN)/python -m pytest -p no:cacheprovider -m soak -s tests/reliability/test_soak.py

test-fast: install
	$(BIN)/python -m pytest -m "not slow" -x $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-tools .pytest_cache .mypy_cache .ruff_cache .coverage*
