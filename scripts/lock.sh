#!/usr/bin/env bash
# Write requirements.lock: the exact version of every package in .venv (what the committed figures were made with),
# which ./scripts/setup.sh installs with (`pip install -c requirements.lock`). pyproject.toml keeps the ranges sdlib
# works with; the lock pins one point inside them. torch (pinned by setup.sh, its build chosen per machine), sdlib
# itself and the real models' wheels (pinned by hash in sdlib/packaged.py) are left out.
#   ./scripts/lock.sh          after changing a dependency and redrawing the figures
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP=$(.venv/bin/python -c "from sdlib import packaged
print('\n'.join(sorted({p.requirement.split('==')[0].lower() for m in packaged.PACKAGED.values() for p in m.parts})))")
{
    echo "# exact versions of sdlib's dependencies on the machine the committed figures were made with (Python $(.venv/bin/python -c 'import platform; print(platform.python_version())'));"
    echo "# written by ./scripts/lock.sh, used by ./scripts/setup.sh as pip constraints; the ranges live in pyproject.toml"
    .venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check \
        | grep -v -i -E '^(torch|sdlib)==' \
        | while IFS= read -r line; do name=${line%%==*}; echo "$SKIP" | grep -qix "$name" || echo "$line"; done
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "lock: $(grep -vc '^#' requirements.lock) packages pinned in requirements.lock"
