# The two set-up commands the README gives are `make run` and `make test`; both build what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
STAMP   := $(VENV)/.installed-dev

.PHONY: run test test-fast lint typecheck bench venv redis-server clean

# What the service needs to run (kept small so `make run` on a fresh clone starts quickly).
$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e ".[dealership,hiredis]"
	touch $(RUNTIME)

# Plus the test and lint tools.
$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e ".[dealership,hiredis]" --group dev
	touch $(STAMP)

venv: $(STAMP)

# Tests start their own redis-server processes; install the binary when the machine lacks it.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src tests/typing

## Everything: lint, types, and the whole test suite (slow suites included).
test: $(STAMP) redis-server lint typecheck
	$(BIN)/pytest

## The quick loop while developing: skips suites marked slow.
test-fast: $(STAMP) redis-server
	$(BIN)/pytest -m "not slow" -x -q

## The reference service on its embedded default (SQLite, plus Redis if one is reachable).
run: $(RUNTIME)
	$(BIN)/python -m dealership

## Every benchmark (tables on stdout, JSON under benchmarks/results/), then docs/performance.md and its plots.
bench: $(STAMP) redis-server
	$(BIN)/python -m pip install --quiet -e . --group bench
	command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.make_report

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
