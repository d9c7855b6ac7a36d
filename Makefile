# mcpmux: `make up` launches the stack on the default configuration, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= mcpmux.json
NODE_PREFIX := tests/node

.PHONY: setup up down status test lint typecheck bench node socat gateways clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

up: setup
	$(BIN)/mcpmux-router --config $(CONFIG) --up

down: setup
	$(BIN)/mcpmux-router --config $(CONFIG) --down

status: setup
	$(BIN)/mcpmux-monitor status --config $(CONFIG)

# Published servers from npm join the tests when Node.js is present; they skip them otherwise:
# server-everything (every message kind), server-sequential-thinking (state kept in its process)
# and server-filesystem (roots from the client context).
NODE_SERVERS := @modelcontextprotocol/server-everything @modelcontextprotocol/server-sequential-thinking \
	@modelcontextprotocol/server-filesystem
node:
	@if command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix $(NODE_PREFIX) $(NODE_SERVERS) \
			|| echo "npm install failed: tests against the published servers will be skipped"; \
	else echo "npm not found: tests against the published servers will be skipped"; fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy tests bench  # strict too: what the tests and the bench rely on is typed

# Four workers on any machine: the tests mostly wait on the processes they start, not on the CPU. A test
# file whose tests share a costly fixture keeps them on one worker (xdist_group).
TEST_WORKERS ?= 4
test: setup node lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --durations=10

# socat joins the overhead benchmark (its floor of three chained relays); without it that row is skipped.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)
APT_GET := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -qq
socat:
	@command -v socat >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 \
		|| $(APT_GET) install -y socat >/dev/null 2>&1 \
		|| { $(APT_GET) update >/dev/null 2>&1 && $(APT_GET) install -y socat >/dev/null 2>&1; } \
		|| echo "could not install socat: the overhead benchmark will skip its socat floor"

# The HTTP benchmark measures mcpmux's endpoint against two gateways a user would put in front of one server:
# supergateway (npm) and mcp-proxy (PyPI; its own environment: it needs mcp<2). Either may be missing.
GATEWAYS := bench/gateways
gateways:
	@command -v npm >/dev/null 2>&1 && npm install --silent --no-audit --no-fund --prefix $(GATEWAYS)/node supergateway \
		|| echo "supergateway not installed: the HTTP benchmark skips it"
	@test -x $(GATEWAYS)/mcp-proxy/bin/mcp-proxy || { $(PYTHON) -m venv $(GATEWAYS)/mcp-proxy \
		&& $(GATEWAYS)/mcp-proxy/bin/pip install --quiet mcp-proxy; } \
		|| echo "mcp-proxy not installed: the HTTP benchmark skips it"

bench: setup socat gateways
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(NODE_PREFIX) .pytest_cache .mypy_cache .ruff_cache
