#!/usr/bin/env bash
# The GPU study (sdlib/studies/gpu_study.py) on a lent GPU machine, or its dry run here.
#   ./scripts/gpu_study.sh --dry-run           every stage on this CPU with tiny models (CI runs it); OUT=... to keep
#   .venv/bin/sdlib gpu-study prepare          here: fill the git-ignored .gpu/ and print the device calls
# On the GPU machine (the calls `sdlib gpu-study plan` prints):
#   bash scripts/gpu_study.sh probe            device, versions, Hugging Face caches; keeps the carried wheels/data
#   bash scripts/gpu_study.sh receive FILE...  keeps carried GGUF parts in /tmp (the repo copy may not persist)
#   bash scripts/gpu_study.sh run --budget S   install the wheels, join and check the GGUFs, run the stages into $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=/tmp/sdlib-carry
keep() {  # copy carried files into $CARRY (idempotent)
    mkdir -p "$CARRY/gguf" "$CARRY/wheels"
    for f in "$@"; do
        case "$f" in
            */gguf/*) cp "$f" "$CARRY/gguf/" ;;
            *.whl) cp "$f" "$CARRY/wheels/" ;;
            *) cp -r "$f" "$CARRY/" ;;
        esac
    done
}
case "${1:-}" in
    --dry-run)
        shift
        OUT=${OUT:-build/gpu-study-dry}
        exec "${PYTHON:-.venv/bin/python}" -m sdlib gpu-study run --dry-run --out "$OUT" --work "${WORK:-$OUT.work}" \
            --budget "${BUDGET:-600}" "$@" ;;
    probe)
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
        python3 - <<'PY'
import importlib.metadata as m, sys
found = []
for name in ("torch", "transformers", "accelerate", "pyarrow", "huggingface-hub", "fsspec", "pandas", "tokenizers"):
    try:
        found.append(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        found.append(f"{name} missing")
print("python", sys.version.split()[0], *found)
PY
        echo "Hugging Face caches:"; ls -d ~/.cache/huggingface/*/* "${HF_HOME:-/nonexistent}"/* 2>/dev/null | head -40
        df -h /tmp | tail -1
        [ -d .gpu/wheels ] && keep .gpu/wheels/*.whl
        for f in .gpu/data.tar.gz .gpu/manifest.json; do [ -f "$f" ] && keep "$f"; done
        ls -la "$CARRY" ;;
    receive)
        shift
        keep "$@"
        ls -la "$CARRY/gguf" ;;
    run)
        shift
        export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
        export SDLIB_CACHE_DIR=/tmp/sdlib-cache PYTHONPATH="$PWD"
        if ! python3 -c "import lm_eval, datasets, gguf" 2>/dev/null; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
                "$CARRY"/wheels/*.whl || { echo "gpu_study: the carried wheels did not install" >&2; exit 1; }
            export PYTHONPATH="$PWD:/tmp/site"
        fi
        if [ -f "$CARRY/data.tar.gz" ]; then
            mkdir -p "$CARRY/data" && tar xzf "$CARRY/data.tar.gz" -C "$CARRY/data"
            export SDLIB_DATA_DIR="$CARRY/data"
        fi
        # join each model's parts (sdlib checks size and sha256 before it uses the file)
        python3 - "$CARRY" <<'PY'
import json, pathlib, sys
carry = pathlib.Path(sys.argv[1])
manifest = json.loads((carry / "manifest.json").read_text()) if (carry / "manifest.json").exists() else {"models": {}}
for name, m in manifest["models"].items():
    parts = [carry / "gguf" / p["file"] for p in m["parts"]]
    missing = [p.name for p in parts if not p.exists()]
    target = carry / "gguf" / m["gguf_file"]
    if missing:
        print(f"gpu_study: {name}: {len(missing)} of {len(parts)} parts not carried ({missing[0]}, ...)")
    elif not target.exists():
        with open(target, "wb") as out:
            for p in parts:
                out.write(p.read_bytes())
        print(f"gpu_study: {name}: joined {len(parts)} parts into {target}")
PY
        export SDLIB_GGUF_DIR="$CARRY/gguf"
        exec python3 -m sdlib gpu-study run --out "${OUT:-$PWD/build/gpu-study}" --work /tmp/sdlib-gpu "$@" ;;
    *)
        sed -n 2,9p "$0"; exit 2 ;;
esac
