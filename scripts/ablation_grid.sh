#!/usr/bin/env bash
# The reproduction study's one-factor-at-a-time grids. A grid is a folder of cell configs plus grid.yaml (its
# evaluation settings): configs/ablations/gpu (2^20 tokens per cell, for a GPU) and configs/ablations/cpu (2^14
# tokens per cell, about 6 minutes each on 2 CPU cores). For every cell: train (resuming an interrupted run,
# reusing a finished one), measure S in both conventions with a bootstrap interval, score LAMBADA at every layer;
# then write, over every finished cell of the grid, build/results/ablations-<grid>.csv and the grid figure figures/ablation_grid_<grid>.{png,html,json}.
# Cut short at any point, rerun it: finished cells and cached results are reused.
#   ./scripts/ablation_grid.sh --grid configs/ablations/cpu                  # every cell, in name order
#   ./scripts/ablation_grid.sh --grid configs/ablations/gpu 00-base 02-alpha-10  # some cells
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GRID=configs/ablations/gpu
if [ "${1:-}" = "--grid" ]; then GRID=${2:?--grid needs a folder}; shift 2; fi
GRID=${GRID%/}
[ -d "$GRID" ] || { echo "ablation_grid: no grid folder $GRID (try configs/ablations/cpu or configs/ablations/gpu)" >&2; exit 2; }
if [ -z "${SDLIB_DATA_DIR:-}" ] && [ -d ../shared/data ]; then export SDLIB_DATA_DIR="$(cd ../shared/data && pwd)"; fi
if [ $# -gt 0 ]; then CELLS=("${@/#/$GRID/}"); CELLS=("${CELLS[@]/%/.yaml}")
else mapfile -t CELLS < <(ls "$GRID"/*.yaml | grep -v '/grid\.yaml$'); fi
for cfg in "${CELLS[@]}"; do
    [ -f "$cfg" ] || { echo "ablation_grid: no config $cfg" >&2; exit 2; }
    echo "== $cfg: train"
    "$PY" -m sdlib train "$cfg" --resume
    echo "== $cfg: measure and evaluate"
    "$PY" -m sdlib.figures.ablation "$cfg"
done
# the table and figure cover every finished cell of the grid (the folder), not only the ones run this time
"$PY" -m sdlib.figures.ablation --collect --finished --figures figures "$GRID"
