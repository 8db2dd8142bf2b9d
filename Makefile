# The two commands: `make demo` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo example test lint unit bench clean venv down sandbox-tools

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip >/dev/null
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check fleet tests bench examples
	$(BIN)/lint-imports
	$(BIN)/mypy fleet examples

# The tests in parallel (pytest-xdist): each owns its nats-server on a free port and its temp dir, and most of
# their time is spent waiting on processes and the bus, so more workers than cores pays on the 2-core machine.
# TEST_WORKERS=0 runs them in this process, one after the other. Tests marked `serial` hold a bound under a load
# they make themselves (a flood must not starve a bystander, a reply within N s): they run alone, afterwards, so that
# the other workers' load is not mistaken for theirs.
TEST_WORKERS ?= 4

unit: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not serial"
	$(BIN)/python -m pytest -q -m serial

test: sandbox-tools lint unit

sandbox-tools:  # the session sandbox needs bubblewrap (fleet.agents.sandbox); as root, install it
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bubblewrap; }); } || \
	  echo "note: no bubblewrap (apt-get install bubblewrap): agents cannot sandbox their sessions"

demo: $(STAMP) sandbox-tools
	PATH="$(abspath $(BIN)):$$PATH" bash examples/demo.sh

example: $(STAMP)
	$(BIN)/python examples/multi_tenant.py

down: $(STAMP)
	$(BIN)/fleet down

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'  # Celery + redis-py for bench/dispatch.py's baseline
	@command -v redis-server >/dev/null || echo "note: no redis-server (apt-get install redis-server): bench/dispatch.py skips its Celery baseline"
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
