# Every target creates or refreshes .venv first (re-installed when pyproject.toml changes).
# torch comes from this machine's local CPU-capable build; override TORCH for other machines.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/vft data digits --out data/digits
	rm -rf runs/demo
	$(BIN)/vft train configs/digits.yaml --name demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv lint
	$(BIN)/pytest -q

bench: venv
	$(BIN)/python bench/train_step.py

clean:
	rm -rf runs data .pytest_cache .ruff_cache
