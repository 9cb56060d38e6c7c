#!/usr/bin/env bash
# Regenerate everything for a profile (configs/profiles.yaml): train (reused when finished, resumed when
# interrupted), measure and evaluate the pretrained and self-distilled models (cached by weights + settings),
# then execute every notebook (papermill) into figures.
#   ./run_all.sh                  default profile: smol (SmolLM2-135M on the CPU, about 80 minutes; writes figures/)
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
    tiny|smol|paper) ;;
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
mapfile -t CONFIGS < <("$PY" -c "from sdlib.profiles import load_profile
for p in load_profile('$PROFILE').pairs: print(p.config_path)")

echo "== plan ($PROFILE profile)"
"$PY" - "$PROFILE" <<'PYEOF'
import sys
from sdlib.checkpoint import list_checkpoints
from sdlib.figures.run import NOTEBOOKS
from sdlib.profiles import load_profile
p = load_profile(sys.argv[1])
for pair in p.pairs:
    c = pair.config
    done = [s for s, _ in list_checkpoints(c.run_dir())]
    state = "finished, reused" if done and done[-1] >= c.total_steps else (f"resume from step {done[-1]}" if done else "train")
    print(f"  train {pair.config_path}: {c.model}, {c.total_steps} steps x {c.batch_size * c.seq_len} tokens -> {c.run_dir()} ({state})")
print(f"  measure + evaluate (subset {p.eval_subset}) the pretrained and self-distilled models; cached by weights + settings")
print(f"  draw {', '.join(NOTEBOOKS)} -> {p.figures_dir()}")
PYEOF
case "$PROFILE" in
    tiny) echo "  estimate: about 2 minutes on 2 CPU cores" ;;
    smol) echo "  estimate on 2 CPU cores: about 10 minutes of training, 30 minutes of evaluation, 8 minutes of notebooks" ;;
    paper) echo "  estimate: hours on GPUs (5 models x 10M tokens), then the full lm-eval tasks" ;;
esac

for cfg in "${CONFIGS[@]}"; do
    echo "== train $cfg"
    $LAUNCH sdlib train "$cfg" --resume || { echo "run_all: training $cfg failed (finished checkpoints are kept; rerun to resume)" >&2; exit 1; }
done
echo "== measure, evaluate and draw"
"$PY" -m sdlib figures --profile "$PROFILE" || { echo "run_all: the figures step failed (finished results are cached; rerun to continue)" >&2; exit 1; }
echo "== done: figures in $("$PY" -c "from sdlib.profiles import load_profile; print(load_profile('$PROFILE').figures_dir())")"
