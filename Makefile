# One entry point for a fresh machine: `make demo` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.oamlm-installed
SYSTEM_PACKAGES := libxc-dev libopenblas-dev

.PHONY: setup system-packages test demo lint clean

setup: $(STAMP)

# apt only when a package is missing, so a second `make setup` takes seconds.
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | system-packages
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# GPAW's C extension only builds with a C++ compiler as CC.
	CC=g++ $(BIN)/pip install -q -e '.[test]'
	@touch $@

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/python examples/demo.py

lint: setup
	$(BIN)/ruff check oamlm_dist tests benchmarks examples

clean:
	rm -rf $(VENV)
