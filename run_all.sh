#!/usr/bin/env bash
# Regenerate everything for a profile: train (reused when finished, resumed when interrupted), then
# measure the baseline and the self-distilled model in both last-state conventions.
#   ./run_all.sh                  default profile: smol (SmolLM2-135M on the CPU, about 50 minutes)
#   ./run_all.sh --profile tiny   the CI profile (seconds)
#   ./run_all.sh --profile paper  the paper's five models (GPUs; multi-GPU: set LAUNCH="accelerate launch")
set -euo pipefail
cd "$(dirname "$0")"
PROFILE=smol
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="${2:?--profile needs tiny, smol or paper}"; shift 2 ;;
        --profile=*) PROFILE="${1#*=}"; shift ;;
        -h|--help) sed -n 2,7p "$0"; exit 0 ;;
        *) echo "run_all: unknown argument $1 (use --profile tiny|smol|paper)" >&2; exit 2 ;;
    esac
done
case "$PROFILE" in
    tiny|smol) CONFIGS=("configs/$PROFILE.yaml") ;;
    paper) CONFIGS=(configs/paper/*.yaml) ;;
    *) echo "run_all: unknown profile '$PROFILE' (use tiny, smol or paper)" >&2; exit 2 ;;
esac
./scripts/setup.sh
PY=.venv/bin/python
if [ -z "${SDLIB_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export SDLIB_DATA_DIR="$(cd ../shared/data && pwd)"
    echo "run_all: using the offline data copies in $SDLIB_DATA_DIR (unset: set SDLIB_DATA_DIR yourself)"
fi
# Only the default profile writes the committed outputs; the others stay under the ignored build folder.
if [ "$PROFILE" != smol ]; then
    export SDLIB_BUILD_DIR="${SDLIB_BUILD_DIR:-$PWD/build/profile-$PROFILE}"
fi
LAUNCH=${LAUNCH:-"$PY -m"}
MEASURE_ARGS=()
if [ "$PROFILE" = tiny ]; then MEASURE_ARGS=(--windows 4 --window-len 128); fi

echo "== plan ($PROFILE profile)"
for cfg in "${CONFIGS[@]}"; do
    "$PY" - "$cfg" <<'PYEOF'
import sys
from sdlib.config import load_config
from sdlib.checkpoint import list_checkpoints
c = load_config(sys.argv[1])
done = [s for s, _ in list_checkpoints(c.run_dir())]
state = "finished, reused" if done and done[-1] >= c.total_steps else (f"resume from step {done[-1]}" if done else "train")
print(f"  {sys.argv[1]}: {c.model}, {c.total_steps} steps x {c.batch_size * c.seq_len} tokens -> {c.run_dir()} ({state})")
print(f"    then measure {c.model} and the trained model (D curve, S in both conventions)")
PYEOF
done
[ "$PROFILE" = smol ] && echo "  estimate: about 45 minutes of training and 3 minutes of measuring on 2 CPU cores"

for cfg in "${CONFIGS[@]}"; do
    IFS=$'\t' read -r run_dir model < <("$PY" -c "import sys; from sdlib.config import load_config
c = load_config(sys.argv[1]); print(c.run_dir(), c.model, sep='\t')" "$cfg")
    echo "== train $cfg"
    $LAUNCH sdlib train "$cfg" --resume || { echo "run_all: training $cfg failed (finished checkpoints are kept; rerun to resume)" >&2; exit 1; }
    for target in baseline trained; do
        src=$([ "$target" = baseline ] && echo "$model" || echo "$run_dir")
        out="$run_dir/measure-$target.json"
        if [ -f "$out" ] && [ "$target" = baseline -o "$out" -nt "$run_dir/checkpoints" ]; then
            echo "== measure $target: cached ($out)"
            continue
        fi
        echo "== measure $target ($src)"
        "$PY" -m sdlib measure "$src" --out "$out" "${MEASURE_ARGS[@]}" || { echo "run_all: measuring $src failed" >&2; exit 1; }
    done
done
echo "== done: runs and measurements under ${SDLIB_BUILD_DIR:-build}"
