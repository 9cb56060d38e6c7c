#!/usr/bin/env bash
# The GPU study (sdlib/experiments/gpu/) on a GPU machine, or its dry run on this one.
#   ./scripts/gpu_study.sh --dry-run                        every stage on the CPU with tiny models (CI runs it)
#   bash scripts/gpu_study.sh run --budget S [--bundle DIR]  on the GPU machine: the stages within S seconds
# A GPU machine without network first gets the models and the data as a bundle made where they are
# (`sdlib bundle create DIR --models qwen2.5-coder-0.5b-instruct --wheels lm_eval==0.4.13,gguf`); `--bundle DIR` checks
# and unpacks it, installs its wheels when the machine's Python lacks them, and points sdlib at it.
# Then, where the repository lives: `sdlib gpu-study import OUT` and `./run_all.sh --profile gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    --dry-run)
        shift
        OUT=${OUT:-build/gpu-study-dry}
        exec "${PYTHON:-.venv/bin/python}" -m sdlib gpu-study run --dry-run --out "$OUT" --work "${WORK:-$OUT.work}" \
            --budget "${BUDGET:-600}" "$@" ;;
    run)
        shift
        PYTHON=${PYTHON:-python3}
        args=()
        bundle=""
        while [ $# -gt 0 ]; do
            case "$1" in
                --bundle) bundle="$2"; shift 2 ;;
                *) args+=("$1"); shift ;;
            esac
        done
        export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
        if [ -n "$bundle" ]; then
            export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
            unpacked=${BUNDLE_INTO:-/tmp/sdlib-bundle}
            if [ ! -d "$unpacked" ]; then
                "$PYTHON" -m sdlib bundle join "$bundle" --into "$unpacked"
            fi
            if [ -d "$unpacked/wheels" ] && ! "$PYTHON" -c "import lm_eval, datasets, gguf" 2>/dev/null; then
                "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/sdlib-site "$unpacked"/wheels/*.whl
                export PYTHONPATH="$PYTHONPATH:/tmp/sdlib-site"
            fi
            [ -d "$unpacked/gguf" ] && export SDLIB_GGUF_DIR="$unpacked/gguf"
            [ -d "$unpacked/data" ] && export SDLIB_DATA_DIR="$unpacked/data"
        fi
        exec "$PYTHON" -m sdlib gpu-study run --out "${OUT:-$PWD/build/gpu-study}" --work "${WORK:-/tmp/sdlib-gpu}" \
            ${args[@]+"${args[@]}"} ;;
    *)
        sed -n 2,8p "$0"; exit 2 ;;
esac
