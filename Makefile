# The two set-up commands the README gives are `make run` and `make test`; both build what they need.
#
# Every environment here is installed from the committed lock (uv.lock) by a pinned uv (tools/uv-requirements.txt,
# with hashes): `uv sync --locked` refuses a lock that no longer matches pyproject.toml instead of re-resolving, so a
# fresh clone installs exactly what was tested, today and next month. `make lock` re-resolves on purpose.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TOOLS  := .tools
UV     := $(TOOLS)/uv/bin/uv
RUNTIME := $(VENV)/.installed-runtime
STAMP   := $(VENV)/.installed-dev
# The two ends of every declared range (make test-oldest / test-latest), each in a virtualenv of its own.
OLDEST := .venv-oldest
LATEST := .venv-latest
ALL_EXTRAS := hiredis,sqlalchemy,fastapi,prometheus,otel,dealership

# uv uses this machine's Python (>= 3.11) and never downloads an interpreter of its own.
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test test-fast test-faults test-oldest test-latest lint typecheck bench venv lock redis-server clean

# The installer itself: the uv release pinned (with its hashes) in tools/uv-requirements.txt.
$(UV): tools/uv-requirements.txt
	@echo "==> [1/2] installing uv (pinned, hash-checked) into $(TOOLS)/uv: a few seconds"
	test -x $(TOOLS)/uv/bin/python || $(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
	  -r tools/uv-requirements.txt
	touch $(UV)

# What the service needs to run (kept small so `make run` on a fresh clone starts quickly).
$(RUNTIME): $(UV) pyproject.toml uv.lock
	@echo "==> [2/2] installing the service's 25 packages from uv.lock into $(VENV): a few seconds"
	$(UV) sync --locked --no-dev --extra dealership --extra hiredis --inexact
	touch $(RUNTIME)

# Everything the tests, lint and type checks use: every extra and the dev group, exactly as locked.
$(STAMP): $(RUNTIME)
	@echo "==> installing every extra and the dev tools from uv.lock into $(VENV): a few seconds"
	$(UV) sync --locked --all-extras
	touch $(STAMP)

venv: $(STAMP)

## Re-resolve every dependency to the newest versions pyproject.toml allows and rewrite uv.lock (commit it).
lock: $(UV)
	$(UV) lock --upgrade

# Tests start their own redis-server processes; install the binary when the machine lacks it.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks harness

typecheck: $(STAMP)
	$(BIN)/mypy src tests/typing harness
	$(BIN)/pyright --pythonpath $(BIN)/python tests/typing/decorator_types.py tests/typing/sync_types.py

## Everything, on the locked set: lint, types, and the whole test suite (slow suites included). What CI runs.
test: $(STAMP) redis-server lint typecheck
	@echo "==> the whole test suite: about 6 min on 2 cores"
	$(BIN)/pytest

## The multi-process fault matrix (tests/faults): 3 processes, a fault injected into a private Redis, ~15 s each.
test-faults: $(STAMP) redis-server
	$(BIN)/pytest -q tests/faults

## The quick loop while developing: skips suites marked slow.
test-fast: $(STAMP) redis-server
	$(BIN)/pytest -m "not slow" -x -q

# $(call range_end,VENV,RESOLUTION): a fresh virtualenv with every extra and the dev group resolved at one end of
# the ranges (not the lock), then lint, types and the whole suite on it. The lock and $(VENV) are left untouched.
define range_end
	@echo "==> $(1): every direct dependency at its $(2) allowed version (pyproject.toml ranges, not uv.lock)"
	$(UV) venv --quiet --clear $(1)
	$(UV) pip install --python $(1)/bin/python --resolution $(2) -e ".[$(ALL_EXTRAS)]" --group dev
	$(UV) pip list --python $(1)/bin/python > $(1)/versions.txt
	$(if $(filter lowest-direct,$(2)),$(1)/bin/python tools/check_floors.py)
	$(1)/bin/ruff check .
	$(1)/bin/ruff format --check src tests benchmarks harness
	$(1)/bin/mypy src tests/typing harness
	@echo "==> the whole test suite on $(1): about 6 min on 2 cores"
	$(1)/bin/pytest -p no:cacheprovider
endef

## The floors: the lowest version of every direct dependency that pyproject.toml allows (uv --resolution lowest-direct).
test-oldest: $(UV) redis-server
	$(call range_end,$(OLDEST),lowest-direct)

## The ceilings: the newest release of everything, as a user installing today would get it.
test-latest: $(UV) redis-server
	$(call range_end,$(LATEST),highest)

## The reference service on its embedded default (SQLite, plus Redis if one is reachable).
run: $(RUNTIME)
	$(BIN)/python -m dealership

## Every benchmark (tables on stdout, JSON under benchmarks/results/), then docs/performance.md.
bench: $(STAMP) redis-server
	$(UV) sync --locked --all-extras --group bench
	command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.make_report

clean:
	rm -rf $(VENV) $(OLDEST) $(LATEST) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
