# The few commands people type. Everything installs into ./.venv, so a fresh machine needs only
# Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: run test lint typecheck fuzz bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "protocoop needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## make run: install, migrate the embedded SQLite database (on first start) and serve on :8000
run: $(STAMP)
	$(BIN)/protocoop serve

## make test: install and run the test suite (PostgreSQL half runs when PROTOCOOP_TEST_POSTGRES_URL is set)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make fuzz: a long schemathesis pass against a real server, as every role (tests/test_fuzz.py);
## PostgreSQL too when PROTOCOOP_TEST_POSTGRES_URL is set. FUZZ_EXAMPLES sets examples per operation.
FUZZ_EXAMPLES ?= 300
fuzz: $(STAMP)
	PROTOCOOP_FUZZ=long PROTOCOOP_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		$(BIN)/python -m pytest tests/test_fuzz.py -rA $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench migrations
	$(BIN)/ruff format --check src tests bench migrations

typecheck: $(STAMP)
	$(BIN)/mypy

## make bench: the benchmark suite (needs wrk and pgbench; about 9 minutes; never in CI)
bench: $(STAMP)
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
