# miniattn — file-based build. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HYPOTHESIS_PROFILE ?= ci
export HYPOTHESIS_PROFILE

.DEFAULT_GOAL := help

# The workloads are many small matrix products, run in parallel processes (JOBS): one BLAS thread per
# process avoids oversubscribing the 2 cores (measured under load: a 60x5120x60 GEMM took 78 ms with
# OpenBLAS threading, 3.7 ms single-threaded). Target-specific, so `make bench` sets its own.
reproduce test test-slow: export OPENBLAS_NUM_THREADS := 1
reproduce test test-slow: export OMP_NUM_THREADS := 1
reproduce test test-slow: export MKL_NUM_THREADS := 1
.PHONY: help install test test-slow reproduce bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed ## create .venv and install miniattn with its test extra

test: $(VENV)/.installed ## run the fast test suite (HYPOTHESIS_PROFILE=dev|ci|thorough)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(VENV)/.installed ## run only the slow scientific checks
	$(PY) -m pytest -m slow -q

# The experiment DAG (results -> figures -> REPORT.md) lives in reproduce.mk.
include reproduce.mk
reproduce: ## regenerate every result, figure and REPORT.md (QUICK=1 smoke run, FULL=1 paper scale)

TORCH_REQUIREMENT ?= torch==2.13.0
JAX_REQUIREMENT ?= jax[cpu]==0.10.2
THREADPOOLCTL_REQUIREMENT ?= threadpoolctl==3.8.0
$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet '$(TORCH_REQUIREMENT)' || echo "PyTorch could not be installed: benchmarks will time NumPy alone"
	$(PY) -m pip install --quiet '$(JAX_REQUIREMENT)' || echo "JAX could not be installed: benchmarks will skip the JAX peer"
	$(PY) -m pip install --quiet '$(THREADPOOLCTL_REQUIREMENT)' || echo "threadpoolctl could not be installed: threads are set through OpenBLAS's C API"
	touch $@

bench: $(VENV)/.bench-installed ## run the speed benchmarks (installs the optional PyTorch extra)
	$(PY) -m benchmarks.run_all

clean: ## remove the virtual environment and caches (results are kept)
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
