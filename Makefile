# seqcast: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0

.PHONY: help install extras dev demo test bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python ## Install seqcast into .venv (CPU torch wheel first, so pip does not pull the CUDA build)
	$(BIN)/pip install --quiet "$(TORCH_CPU)" || $(BIN)/pip install --quiet "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install --quiet -e .

extras: install ## Install the optional extras named in EXTRAS (make extras EXTRAS=ray), torch kept at the CPU wheel
	$(BIN)/pip install --quiet "$(TORCH_CPU)" -e ".[$(EXTRAS)]"

dev: install ## Install seqcast with the test and lint extras
	$(BIN)/pip install --quiet -e ".[dev]"

demo: install ## Set up and run the end-to-end demo on the embedded stores
	$(BIN)/seqcast demo

test: dev ## Install the test extras, then lint, type-check and run the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: install ## Run the benchmarks against Darts and NeuralForecast (installs the bench extra)
	$(BIN)/pip install --quiet "$(TORCH_CPU)" -e ".[bench]"
	$(BIN)/python benchmarks/run.py

clean: ## Remove the virtual environment and the embedded stores
	rm -rf $(VENV) .seqcast
