# sfs: `make run` runs the full sweep, `make test` runs every test. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pip compiles every installed file to bytecode, one at a time (most of the set-up's time on
# 2 cores); instead it installs without, and compileall compiles on every core afterwards
# (126 s -> ~80 s for `make setup-test`). Like pip, it skips a file that does not compile
# for this Python (torch ships one for 3.12).
PIP := $(PY) -m pip
INSTALL := $(PIP) install --no-compile
COMPILE := $(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
TORCH_VERSION ?= 2.13.0
ARGS ?=
# A GPU is detected by its driver or device nodes, never by nvcc (CPU-only machines may have it).
HAS_GPU := $(shell { nvidia-smi -L >/dev/null 2>&1 || ls /dev/nvidia[0-9]* >/dev/null 2>&1; } && echo yes)

.PHONY: setup setup-test run test test-fast test-nightly lint clean

setup: $(VENV)/.sfs-setup

$(VENV)/.sfs-setup: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(INSTALL) --quiet --upgrade pip
	@# torch first, so that nothing later pulls a multi-GB CUDA build onto a CPU-only machine:
	@# the CPU wheel from pip's local find-links if there is one, else the CPU index.
	@if [ "$(HAS_GPU)" = yes ]; then \
	  echo "GPU found: installing torch==$(TORCH_VERSION) with CUDA"; \
	  $(INSTALL) "torch==$(TORCH_VERSION)"; \
	else \
	  echo "no GPU: installing the CPU build of torch==$(TORCH_VERSION)"; \
	  $(INSTALL) --quiet --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null || \
	  $(INSTALL) --no-deps "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu; \
	  $(INSTALL) --quiet "torch==$(TORCH_VERSION)"; \
	fi
	$(INSTALL) --quiet -e .
	@$(COMPILE)
	@touch $@

setup-test: $(VENV)/.sfs-setup-test

$(VENV)/.sfs-setup-test: $(VENV)/.sfs-setup
	$(INSTALL) --quiet -e ".[test]"
	@$(COMPILE)
	@touch $@

run: setup
	$(PY) -m sfs.launch +sweep=full $(ARGS)

# Lint (ruff), the architecture's import contracts (import-linter), then every test tier:
# unit, integration and end-to-end (plain `pytest`, i.e. `make test-fast`, runs the unit tier).
# Two processes (pytest-xdist), a whole test file to each: many tests wait on a subprocess,
# Ray's start or a server, and a file's module-scoped sweeps are built once. Files go out in
# collection order, the launch-heavy tiers first (tests/conftest.py), not xdist's default
# of the files with the most tests first, which left the longest files for the end.
# XDIST= runs them in one process. The 25 slowest tests are listed at the end.
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder
test: setup-test lint
	@# sfs's own bytecode: this environment may forbid writing it at import (PYTHONDONTWRITEBYTECODE),
	@# and every launch, worker and CLI test would compile sfs again (~0.5 s of CPU each)
	@$(PY) -m compileall -q -j 0 sfs >/dev/null
	$(PY) -m pytest -o addopts="-ra" -m "not nightly" $(XDIST) --durations=25 $(ARGS)

# The longest calibration runs (1000 datasets per case); their 120-dataset variants run in `make test`.
test-nightly: setup-test
	$(PY) -m pytest -o addopts="-ra" -m nightly $(ARGS)

test-fast: setup-test
	$(PY) -m pytest $(ARGS)

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache
