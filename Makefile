# Duban: `make demo` runs the whole thing locally; `make test` is what CI runs (.ci/run).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Python 3.11 is what pyproject allows; fall back to python3 (pip then says if it is not 3.11).
BOOT_PYTHON := $(shell command -v python3.11 2>/dev/null || command -v python3)
PACKAGES := workflows activities infra audit planfiles service web worker.py starter.py
BENCHMARKS := bench/bench_verify.py bench/bench_replay.py bench/bench_board.py

.PHONY: help venv test lint fmt demo bench clean

help:
	@echo "make demo   - dev server + store + worker + demo plan, then where to look (Ctrl-C stops)"
	@echo "make test   - ruff, mypy, pytest (what CI runs)"
	@echo "make lint | fmt | bench | clean"

# Reinstall whenever the dependency declarations change; otherwise do nothing.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(BOOT_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

$(VENV): $(STAMP)
	@touch $@

venv: $(VENV)

test: $(VENV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy domain
	$(VENV)/bin/mypy $(PACKAGES)
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=15

lint: $(VENV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy domain
	$(VENV)/bin/mypy $(PACKAGES)

fmt: $(VENV)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(VENV)
	$(PY) -m service.demo

bench: $(VENV)
	@for f in $(BENCHMARKS); do echo "== $$f"; $(PY) "$$f"; done

# Keeps .venv (slow to rebuild); removes the demo's state and every cache.
clean:
	rm -rf .duban .pytest_cache .mypy_cache .ruff_cache .hypothesis build
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
