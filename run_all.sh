#!/usr/bin/env bash
# Regenerate everything for a profile (configs/profiles.yaml): train (reused when finished, resumed when
# interrupted), measure and evaluate the pretrained and self-distilled models (cached by weights + settings),
# then execute the profile's notebooks (papermill) into its figures folder.
#   ./run_all.sh                  default profile: jump (SmolLM2-135M-Instruct: the paper's recipe and the best recipe
#                                 beyond it, with the fold-split; on the CPU; writes figures/jump/)
#   ./run_all.sh --profile qwen   Qwen2.5-Coder-0.5B-Instruct, two recipes (writes figures/; ~2.5 h on 2 cores)
#   ./run_all.sh --profile quick  a first look with SmolLM2-135M-Instruct (20 training steps, a small evaluation)
#   ./run_all.sh --profile atlas  the convergence atlas of the three real models (writes figures/atlas.*)
#   ./run_all.sh --profile tiny   the CI profile (minutes)
#   ./run_all.sh --profile paper  the paper's five models (GPUs; multi-GPU: LAUNCH="accelerate launch --config_file ...")
#   ./run_all.sh --profile gpu    draw figures/gpu/ from the GPU study's record (sdlib gpu-study import)
#   ./run_all.sh --profile NAME   any profile added to configs/profiles.yaml
#   ./run_all.sh --redraw         redraw every committed figure from its saved JSON at this commit (no model; a
#                                 minute); with --profile, that profile's figures only
set -euo pipefail
cd "$(dirname "$0")"
PROFILE=jump
PROFILE_GIVEN=0
REDRAW=0
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="${2:?--profile needs a profile of configs/profiles.yaml}"; PROFILE_GIVEN=1; shift 2 ;;
        --profile=*) PROFILE="${1#*=}"; PROFILE_GIVEN=1; shift ;;
        --redraw) REDRAW=1; shift ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        *) echo "run_all: unknown argument $1 (use --profile NAME, --redraw)" >&2; exit 2 ;;
    esac
done
case "$PROFILE" in
    [A-Za-z0-9]*) ;;
    *) echo "run_all: bad profile name '$PROFILE' (use a profile of configs/profiles.yaml)" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/sdlib ]; then
    echo "== set-up: a virtual environment with torch (CPU build), sdlib and Jupyter in .venv (first time only; 1.5 min on"
    echo "   a 2-core CPU with pip's cache warm, plus the download of torch otherwise); then the plan with every stage's time"
fi
./scripts/setup.sh
SDLIB=.venv/bin/sdlib
if [ -z "${SDLIB_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export SDLIB_DATA_DIR="$(cd ../shared/data && pwd)"
    echo "run_all: using the offline data copies in $SDLIB_DATA_DIR (unset: set SDLIB_DATA_DIR yourself)"
fi
"$SDLIB" plan --profile "$PROFILE" --figures-dir >/dev/null || exit 2   # an unknown profile: one line, before any work
# Only the profiles with committed figures (jump, qwen, atlas, gpu) share build/; the others get their own.
case "$PROFILE" in jump|qwen|atlas|gpu) ;; *) export SDLIB_BUILD_DIR="${SDLIB_BUILD_DIR:-$PWD/build/profile-$PROFILE}" ;; esac
if [ "$REDRAW" = 1 ]; then
    # the saved JSON holds what each figure shows: nothing is trained, measured or evaluated
    if [ "$PROFILE_GIVEN" = 1 ]; then PROFILES="$PROFILE"; else PROFILES="jump qwen atlas"; fi
    for p in $PROFILES; do
        echo "== redraw the $p profile's figures"
        "$SDLIB" figures --profile "$p" --redraw
    done
    if [ "$PROFILE_GIVEN" = 0 ]; then
        for saved in figures/ablation_grid_*.json; do
            name=$(basename "$saved" .json); name=${name#ablation_grid_}
            case "$name" in *_training|'*') continue ;; esac
            echo "== redraw grid $name"
            "$SDLIB" grid redraw "configs/ablations/$name.yaml" --figures figures
        done
    fi
    echo "== done: figures redrawn"
    exit 0
fi
echo "== plan ($PROFILE profile)"
"$SDLIB" plan --profile "$PROFILE"
MODELS=$("$SDLIB" plan --profile "$PROFILE" --models)
if [ -n "$MODELS" ]; then ./scripts/setup.sh --models "$MODELS"; fi
LAUNCH=${LAUNCH:-".venv/bin/python -m"}
for cfg in $("$SDLIB" plan --profile "$PROFILE" --configs); do
    echo "== train $cfg"
    $LAUNCH sdlib train "$cfg" --resume || { echo "run_all: training $cfg failed (finished checkpoints are kept; rerun to resume)" >&2; exit 1; }
done
echo "== measure, evaluate and draw"
"$SDLIB" figures --profile "$PROFILE" || { echo "run_all: the figures step failed (finished results are cached; rerun to continue)" >&2; exit 1; }
echo "== done: figures in $("$SDLIB" plan --profile "$PROFILE" --figures-dir)"
