# The two commands: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit system-deps venv docs clean

demo: system-deps $(STAMP)
	$(BIN)/callvault dev up
	$(BIN)/callvault demo

test: system-deps $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check callvault tests
	$(BIN)/ruff format --check callvault tests
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" tests/test_plan.py tests/test_archive_layout.py tests/test_tenancy_rules.py

docs: $(STAMP)
	$(BIN)/python -m callvault.clidoc > docs/cli.md

system-deps:
	@scripts/install-system-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
