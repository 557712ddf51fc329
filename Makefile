# One entry point for a fresh machine: `make demo` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.oamlm-installed
# openmpi: GPAW is built with MPI so a fine calculation can run on several ranks (mpi_ranks).
SYSTEM_PACKAGES := libxc-dev libopenblas-dev openmpi-bin libopenmpi-dev
# GPAW's C extension only builds with a C++ compiler (CC=g++ without a siteconfig); the
# siteconfig selects the MPI C++ wrapper. Imported by plain python GPAW stays serial.
GPAW_BUILD := GPAW_CONFIG=$(CURDIR)/deploy/gpaw-siteconfig.py CC=g++

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

$(STAMP): pyproject.toml deploy/gpaw-siteconfig.py | system-packages
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(GPAW_BUILD) $(BIN)/pip install -q -e '.[test]'
	@# A GPAW built before without MPI (an older venv, or pip's wheel cache) is rebuilt once.
	@$(BIN)/python -c 'import sys, gpaw.cgpaw as c; sys.exit(not c.have_mpi)' || { \
	  echo "rebuilding GPAW with MPI"; \
	  $(GPAW_BUILD) $(BIN)/pip install -q --no-deps --no-cache-dir --force-reinstall \
	    "gpaw==$$($(BIN)/python -c 'import gpaw; print(gpaw.__version__)')"; }
	@touch $@

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/python examples/demo.py

lint: setup
	$(BIN)/ruff check oamlm_dist tests benchmarks examples

clean:
	rm -rf $(VENV)
