# Set-up on a fresh machine is one command each:
#   make run    creates .venv, installs quantlab and its dependencies, runs `quantlab train` (the default)
#   make test   the same set-up, then the test suite
#   make lint   ruff and the import contract (lint-imports)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision from PyPI, as a matching pair.
TORCH ?= torch==2.14.1 torchvision==0.29.2
SOURCES := pyproject.toml setup.py $(shell find quantlab conf -name '*.py' -o -name '*.yaml')

.PHONY: run test test-all lint bench clean

$(BIN)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet ".[dev,joblib,slurm,export,mlflow]"
	touch $@

# A normal (non-editable) install, refreshed whenever the sources change.
$(BIN)/.quantlab: $(BIN)/.deps $(SOURCES)
	$(BIN)/pip install --quiet --no-deps --force-reinstall .
	touch $@

run: $(BIN)/.quantlab
	$(BIN)/quantlab train

test: $(BIN)/.quantlab
	$(BIN)/python -m pytest

test-all: $(BIN)/.quantlab
	$(BIN)/python -m pytest -m ""

# ruff, and the house plan's import contract (pyproject.toml [tool.importlinter]; run from the checkout)
lint: $(BIN)/.deps
	$(BIN)/ruff check quantlab tests scripts setup.py
	$(BIN)/ruff format --check quantlab tests scripts setup.py
	$(BIN)/lint-imports

bench: $(BIN)/.quantlab
	$(BIN)/quantlab bench --model resnet18 vgg16 --batch-size 128

clean:
	rm -rf $(VENV) build *.egg-info
