#!/usr/bin/env bash
# Set up .venv if needed, then run the tests. `./run_tests.sh --fast` runs only tests/unit (the maths, configs,
# layering and loss equivalence; about a minute); `./run_tests.sh --slow` adds the opt-in slow tests
# (smollm2-135m-instruct). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
targets=()
if [ "${1:-}" = "--slow" ]; then
    export SDLIB_SLOW=1
    shift
elif [ "${1:-}" = "--fast" ]; then
    targets=(tests/unit -q -m "not committed")
    shift
fi
if [ -z "${SDLIB_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    echo "run_tests: SDLIB_DATA_DIR is unset; tests that need the offline data will skip" \
         "(export SDLIB_DATA_DIR=../shared/data to run them)"
fi
# Tests write runs and results under a throw-away build folder, never over figures/.
export SDLIB_BUILD_DIR="${SDLIB_BUILD_DIR:-$PWD/build/test}"
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "${targets[@]}" "$@"
