# Everything runs through scripts/setup.sh, which is idempotent and fast when
# nothing changed, so every target can depend on it.
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
INFERSERVER_SESSION_PATH ?= /var/tmp/inferserver-sessions

.PHONY: setup test serve images bench

setup:
	scripts/setup.sh

images:
	tests/images/build.sh

# pytest exits 5 when it collected nothing; make fails on it like on any other
# non-zero exit, and this says why.
test: setup
	@rc=0; .venv/bin/python -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); that is a failure" >&2; fi; \
	exit $$rc

serve: setup
	INFERSERVER_MODEL_PATH=$(CURDIR)/examples/models \
	INFERSERVER_SESSION_PATH=$(INFERSERVER_SESSION_PATH) \
	.venv/bin/inferserver serve --host $(HOST) --port $(PORT)

# Benchmarks against the old server and the machine's limits (heavy, ~10 min; not run by CI): bench/README.md.
bench:
	bench/run.sh $(BENCH_ARGS)
