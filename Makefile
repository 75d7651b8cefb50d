# kiban: `make run` serves, `make test` tests. Both bootstrap everything on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# uv from PATH, or bootstrapped with pip into .tools/ (kept apart from .venv, which `uv pip sync`
# keeps exactly equal to the lock).
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint format migrate bench lock clean

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.5"

$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml | $(UV)
	@test -x $(PY) || $(UV) venv --quiet --python python3 $(VENV)
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip sync --quiet requirements-dev.lock
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip install --quiet --no-deps -e .
	@touch $@

install: $(VENV)/.installed  ## a .venv with the project (editable) and the dev tools, from the locks

migrate: install  ## apply database migrations (KIBAN_DATABASE_URL, default ./kiban.db)
	$(VENV)/bin/kiban migrate

run: migrate  ## serve on http://$(HOST):$(PORT)
	$(VENV)/bin/kiban serve --host $(HOST) --port $(PORT)

test: install  ## the whole suite (PostgreSQL/Redis parts need KIBAN_TEST_DATABASE_URL / KIBAN_TEST_REDIS_URL)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench migrations
	$(VENV)/bin/ruff format --check src tests bench migrations
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format src tests bench migrations
	$(VENV)/bin/ruff check --fix src tests bench migrations

bench: install  ## performance figures (see docs/benchmarks.md)
	$(PY) bench/run_all.py

lock:  ## re-lock exact versions after editing requirements*.in
	$(UV) pip compile --quiet --no-header --python-version 3.11 requirements.in -o requirements.lock
	$(UV) pip compile --quiet --no-header --python-version 3.11 requirements-dev.in -o requirements-dev.lock

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
