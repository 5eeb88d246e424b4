# Each target first runs scripts/setup.sh for its own purpose (serve, test or lint), which installs only what that
# purpose needs, says what it installs, and is idempotent and fast when nothing changed.
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# Line and branch coverage of the package, printed after the tests; the servers the integration tests start as
# subprocesses are measured too ([tool.coverage.run] patch in pyproject.toml). COV_ARGS= turns it off.
COV_ARGS ?= --cov=inferserver --cov-branch --cov-report=term
INFERSERVER_SESSION_PATH ?= /var/tmp/inferserver-sessions
# The Python environment scripts/setup.sh creates (it reads INFERSERVER_VENV).
VENV ?= .venv

.PHONY: setup setup-serve setup-test setup-lint test serve lint images bench

# Everything serve and test need.
setup:
	INFERSERVER_VENV=$(abspath $(VENV)) scripts/setup.sh serve test

setup-serve:
	INFERSERVER_VENV=$(abspath $(VENV)) scripts/setup.sh serve

setup-test:
	INFERSERVER_VENV=$(abspath $(VENV)) scripts/setup.sh test

setup-lint:
	INFERSERVER_VENV=$(abspath $(VENV)) scripts/setup.sh lint

images:
	tests/images/build.sh

# ruff (lint and format) and mypy --strict over src/inferserver (config in pyproject.toml). Every check runs even
# when an earlier one fails, so one run shows them all; the recipe line fails if any did. `make lint` runs it, and
# `make test` runs it before the tests: a finding fails the test run.
LINT_CHECKS = rc=0; \
	echo "== ruff check"; $(VENV)/bin/ruff check --output-format concise . || rc=1; \
	echo "== ruff format --check"; $(VENV)/bin/ruff format --check --output-format concise . || rc=1; \
	echo "== mypy"; $(VENV)/bin/mypy || rc=1; \
	if [ $$rc -ne 0 ]; then echo "make: the lint checks above found problems" >&2; fi; \
	exit $$rc

# Lint first, then pytest. pytest exits 5 when it collected nothing; make fails on it like on any other
# non-zero exit, and this says why.
test: setup-test
	@$(LINT_CHECKS)
	@rc=0; $(VENV)/bin/python -m pytest $(COV_ARGS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); that is a failure" >&2; fi; \
	exit $$rc

serve: setup-serve
	INFERSERVER_MODEL_PATH=$(CURDIR)/examples/models \
	INFERSERVER_SESSION_PATH=$(INFERSERVER_SESSION_PATH) \
	$(VENV)/bin/inferserver serve --host $(HOST) --port $(PORT)

# The lint checks alone (LINT_CHECKS above).
lint: setup-lint
	@$(LINT_CHECKS)

# Benchmarks against the old server and the machine's limits (heavy, ~10 min; not run by CI): bench/README.md.
bench:
	bench/run.sh $(BENCH_ARGS)
