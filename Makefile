# actionq: `make run` runs the demo, `make check` runs lint, types and tests (what CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.DEFAULT_GOAL := help
.PHONY: help run check lint format types imports docs test test-unit test-integration install install-dev clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# The venv, created once; pip upgraded because editable installs from pyproject need pip >= 21.3.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamp files make the installs idempotent: pip runs again only when pyproject.toml changed.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[embedded,gateway]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[embedded,gateway,otel,test,docs]'
	@touch $@

install: $(VENV)/.installed-run  ## Create the venv and install actionq (with the embedded server)
install-dev: $(VENV)/.installed-dev  ## Also install the test, lint and type-check tools

run: install  ## Start Redis (if none is configured), a worker and demo jobs; Ctrl-C stops all
	$(BIN)/actionq up

check: lint types imports docs test  ## Lint, type-check, the import contracts, the docs and every test: the one command CI runs

lint: install-dev  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev  ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

types: install-dev  ## mypy --strict (files listed in pyproject.toml)
	$(BIN)/mypy

imports: install-dev  ## The architecture's import contracts (pyproject.toml [tool.importlinter])
	$(BIN)/lint-imports --no-cache

docs: install-dev  ## Build the docs site (mkdocs.yml) into build/site; --strict: a broken link or anchor fails
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# pytest exits 5 when it collected no tests; make treats any non-zero exit as failure.
test: install-dev  ## All tests (integration tests start their own redis-server)
	$(BIN)/pytest -n 4

test-unit: install-dev  ## Unit tests only (no Redis server)
	$(BIN)/pytest -n auto -m 'not integration'

test-integration: install-dev  ## Integration tests only
	$(BIN)/pytest -n 4 -m integration

clean:  ## Remove the venv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
