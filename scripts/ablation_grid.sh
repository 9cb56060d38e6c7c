#!/usr/bin/env bash
# The reproduction study's one-factor-at-a-time grid (configs/ablations/*.yaml, ~2^20 tokens each): train
# every cell (resuming an interrupted one, reusing a finished one), measure it (S in both conventions with a
# bootstrap interval) and score it on LAMBADA at every layer, then write build/results/ablations.csv.
# Cut short at any point, rerun it: finished cells and cached results are reused.
#   ./scripts/ablation_grid.sh                      # every cell, in name order
#   ./scripts/ablation_grid.sh 00-base 02-alpha-10  # some cells
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ -z "${SDLIB_DATA_DIR:-}" ] && [ -d ../shared/data ]; then export SDLIB_DATA_DIR="$(cd ../shared/data && pwd)"; fi
if [ $# -gt 0 ]; then CELLS=("${@/#/configs/ablations/}"); CELLS=("${CELLS[@]/%/.yaml}"); else CELLS=(configs/ablations/*.yaml); fi
for cfg in "${CELLS[@]}"; do
    [ -f "$cfg" ] || { echo "ablation_grid: no config $cfg" >&2; exit 2; }
    echo "== $cfg: train"
    "$PY" -m sdlib train "$cfg" --resume
    echo "== $cfg: measure and evaluate"
    "$PY" -m sdlib.figures.ablation "$cfg"
done
"$PY" -m sdlib.figures.ablation --collect "${CELLS[@]}"
