SHELL := /bin/bash
# The two commands of the README: `make demo` (main job) and `make test` (tests).
# Both set up .venv first: torch 2.13.0 CPU before the project, so no CUDA build is pulled.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGESHIP := $(VENV)/bin/edgeship
BUILD ?= build
# A second venv with only the agent extra (what a Raspberry Pi gets): the agent's tests run in
# it too, with the server and the converter in $(VENV) as subprocesses.
AGENT_VENV ?= .venv-agent

.PHONY: setup system-deps sdk-deps demo test test-agent-only sdk-test conformance lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[converter,agent,server,dev]'
	touch $@

# The whole loop (docs/demo.md): train + convert (cached in $(BUILD)/demo/example), a rollout
# server, Prometheus when installed, 100 agents, a bad release rolled back, a good one promoted.
# 20 of the agents are TypeScript SDK phones in Node (sdk/js, set up by sdk-deps when npm exists).
demo: setup sdk-deps
	$(EDGESHIP) demo --workdir $(BUILD)/demo

# sdk/js's packages (npm ci --ignore-scripts: onnxruntime-node's CPU binaries are in the package),
# installed when npm exists and the lock file is newer than what is installed. The demo's phones,
# the dev suite's demo test, the SDK's tests and the conformance kit's TypeScript driver use them.
sdk-deps:
	@if command -v npm >/dev/null && { [ ! -f sdk/js/node_modules/.package-lock.json ] || \
		[ sdk/js/package-lock.json -nt sdk/js/node_modules/.package-lock.json ]; }; then \
		cd sdk/js && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; fi

# System packages some tests need, installed from Debian's packages when missing and we may
# (root); otherwise those tests skip locally and fail under CI=true:
# - postgresql: server binaries for the PostgreSQL tests (they start a throwaway server);
# - prometheus: promtool and prometheus for the monitoring tests (rules, config, live scrape);
# - nginx: the reverse proxy of docs/deploy.md, run in front of a server by its test.
# - chromium: the headless browser the console's page tests drive (Playwright, tests/browser.py).
system-deps:
	@pkgs=""; \
	if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
		pkgs="$$pkgs postgresql"; \
	fi; \
	if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then pkgs="$$pkgs prometheus"; fi; \
	if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then pkgs="$$pkgs nginx"; fi; \
	if ! command -v chromium >/dev/null; then pkgs="$$pkgs chromium"; fi; \
	if [ -n "$$pkgs" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$pkgs (Debian packages)"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null; \
		else echo "missing Debian packages$$pkgs: install them for their tests"; fi; \
	fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

test: system-deps lint sdk-deps
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-agent-only
	$(MAKE) --no-print-directory sdk-test
	$(MAKE) --no-print-directory conformance

$(AGENT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(AGENT_VENV)
	$(AGENT_VENV)/bin/python -m pip install -q --upgrade pip
	$(AGENT_VENV)/bin/python -m pip install -q -e '.[agent]' pytest
	touch $@

test-agent-only: setup $(AGENT_VENV)/.installed
	EDGESHIP_AGENT_ONLY=1 EDGESHIP_TOOLCHAIN_PYTHON=$(abspath $(PY)) \
		$(AGENT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/edge_agent tests/test_agent_only_install.py

# The TypeScript device SDK (sdk/js, docs/phones.md): npm ci, type check, unit tests and the
# integration tests against the real server from $(VENV). Without npm the SDK's tests are skipped
# locally and fail under CI=true.
sdk-test: setup sdk-deps
	@ci=$$(printf '%s' "$$CI" | tr '[:upper:]' '[:lower:]' | tr -d '[:space:]'); \
	if ! command -v npm >/dev/null; then \
		case "$$ci" in ""|0|false|no) echo "npm not found: skipping the SDK tests (sdk/js)"; exit 0;; \
		*) echo "CI=$$CI and npm is missing: the SDK tests (sdk/js) need Node.js 20.19+"; exit 1;; esac; \
	fi; \
	cd sdk/js && npx tsc --noEmit && EDGESHIP_TOOLCHAIN_PYTHON=$(abspath $(PY)) npx vitest run

# The device conformance kit (docs/conformance.md): every scenario against the real server, for the
# Python agent and the TypeScript SDK (its driver built with sdk/js's tsc). Without npm the
# TypeScript half is skipped locally and fails under CI=true.
conformance: setup sdk-deps
	$(PY) -m pytest -q -p no:cacheprovider conformance

bench: setup
	$(PY) -m benchmarks.convert_bench

clean:
	rm -rf $(BUILD)
