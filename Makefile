# The few commands people type. Everything installs into ./.venv, so a fresh machine needs only
# Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP   := $(VENV)/.installed-dev

.PHONY: run test lint typecheck client fuzz bench soak clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "protocoop needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving needs only the package and its runtime dependencies; the tests and tools add the rest.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $(SERVE_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(DEV_STAMP) $(SERVE_STAMP)

## make run: install what serving needs, migrate the embedded SQLite database (on first start) and
## serve on :8000
run: $(SERVE_STAMP)
	$(BIN)/protocoop serve

## make test: install and run the test suite (PostgreSQL half runs when PROTOCOOP_TEST_POSTGRES_URL is set):
## every test in parallel (TEST_WORKERS, default 2) except the `exclusive` ones (concurrency, crashes,
## faults and timeouts against real servers), which then run one at a time. PYTEST_ARGS narrows
## both, e.g. PYTEST_ARGS=tests/api/test_members.py
## (exit code 5 means that half had nothing to run). Each pass ends with its 15 slowest tests.
TEST_WORKERS ?= 2
test: $(DEV_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not exclusive" --durations=15 $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -p no:xdist -m exclusive --durations=15 $(PYTEST_ARGS) || [ $$? -eq 5 ]

## make fuzz: a long schemathesis pass against a real server, as every role (tests/system/test_fuzz.py);
## PostgreSQL too when PROTOCOOP_TEST_POSTGRES_URL is set. FUZZ_EXAMPLES sets examples per operation.
FUZZ_EXAMPLES ?= 300
fuzz: $(DEV_STAMP)
	PROTOCOOP_FUZZ=long PROTOCOOP_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		$(BIN)/python -m pytest tests/system/test_fuzz.py -rA $(PYTEST_ARGS)

## make lint: ruff, and the import contracts of docs/architecture.md (lint-imports)
lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench migrations examples scripts
	$(BIN)/ruff format --check src tests bench migrations examples scripts
	$(BIN)/lint-imports

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

## make client: regenerate the synchronous client (src/protocoop/client/_sync/) from the
## asynchronous one, which is the one to edit (scripts/unasync_client.py; a test checks it is current)
client: $(DEV_STAMP)
	$(BIN)/python scripts/unasync_client.py

## make bench: the benchmark suite, every row of issue 12's table against the same run's ceilings
## (needs wrk and pgbench, and initdb for the production-like PostgreSQL; an hour or more; never in
## CI). BENCH_ARGS=--quick for shorter runs, BENCH_ARGS=--smoke to check the wiring in minutes.
bench: $(DEV_STAMP)
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

## make soak: 32 connections posting for 5 minutes on a fresh database, per database; throughput
## and p99 per minute, errors, memory, the audit (SOAK_ARGS, e.g. --seconds 60 --database sqlite)
soak: $(DEV_STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
