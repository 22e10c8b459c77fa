# miniattn — file-based build. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HYPOTHESIS_PROFILE ?= ci
export HYPOTHESIS_PROFILE

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-all reproduce bench clean

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

reproduce: $(VENV)/.installed ## regenerate every result, figure and REPORT.md (FULL=1 for paper scale)
	@echo "The experiments (E1-E7) are not implemented yet; see the open issues. Nothing to reproduce."

clean: ## remove the virtual environment and caches (results are kept)
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
