# igpo-rlhf — every target sets itself up: a local .venv is created and filled on first use.
# `make test` and `make demo` need nothing installed beforehand but python3 (>= 3.10).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# openrlhf requires flash-attn, which cannot be installed without CUDA; we install it without
# its dependencies, plus the light packages that the OpenRLHF modules we import need.
OPENRLHF_PIN := openrlhf==0.11.2
OPENRLHF_LIGHT_DEPS := pylatexenc sympy jsonlines

# Shared environment: offline model hubs, a local Ray without token auth, a cached build
# directory for DeepSpeed's CPU ops (its first init compiles one with g++).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export PYTHONPATH := $(CURDIR)

CONFIG ?= configs/demo.yaml
GPUS ?= 0
RUN_DIR ?= runs/demo
SHARED ?= ../shared

.PHONY: help install test lint format demo train search-proxy bench-scorer bench-search bench-retrieval bench-step clean

help:
	@echo "make demo          IGPO training on CPU with the built-in world (RUN_DIR=$(RUN_DIR))"
	@echo "make test          install into .venv and run the whole suite (ruff + pytest)"
	@echo "make train CONFIG=... GPUS=N   train on this machine (Ray started locally)"
	@echo "make search-proxy  serve the search proxy (SEARCH_CONFIG=configs/search/bm25_wiki.yaml)"
	@echo "make bench-*       benchmarks in bench/ (see bench/RESULTS.md)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py Makefile | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(OPENRLHF_PIN)
	$(PIP) install -q $(OPENRLHF_LIGHT_DEPS)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

SEARCH_CONFIG ?= configs/search/bm25_wiki.yaml
search-proxy: $(STAMP)
	$(PY) -m services.search_proxy --config $(SEARCH_CONFIG)

demo: $(STAMP)
	@echo "make demo: not yet available (the training pipeline lands with issue 5)"; exit 1

clean:
	rm -rf $(VENV) .cache runs build *.egg-info .pytest_cache .ruff_cache
