# The two commands: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test engines lint unit system-deps venv docs clean sync-twins

demo: system-deps $(STAMP)
	$(BIN)/callvault dev up
	$(BIN)/callvault demo

test: system-deps $(STAMP) engines lint
	$(BIN)/python -m pytest

# One line: whether the Citus tests (and pg_partman 5.x's) will run on this machine or be skipped.
engines: $(STAMP)
	@$(BIN)/python -m callvault.engines

lint: $(STAMP)
	$(BIN)/ruff check callvault tests scripts
	$(BIN)/ruff format --check callvault tests scripts
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" tests/test_plan.py tests/test_archive_layout.py tests/test_tenancy_rules.py

# docs/cli.md (committed) and the HTML API reference in docs/api/ (generated, not committed; see docs/api.md).
# The reference is pdoc over tests/test_api_reference.py's PUBLIC_MODULES; any pdoc warning fails the build.
docs: $(STAMP)
	$(BIN)/python -m callvault.clidoc > docs/cli.md
	rm -rf docs/api
	$(BIN)/python tests/test_api_reference.py docs/api

# The sync twins are generated from their asyncio sources (tests/test_twins.py checks they are current).
sync-twins: $(STAMP)
	$(BIN)/python scripts/async_to_sync.py

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
