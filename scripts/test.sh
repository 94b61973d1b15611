#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (scripts/bootstrap.sh),
# then lints (ruff), type-checks (mypy --strict) and runs pytest. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
export PATH="$root/.venv/bin:$root/node_modules/.bin:$PATH"
echo "== ruff" >&2
ruff check .
ruff format --check . >/dev/null || { ruff format --check . ; exit 1; }
echo "== mypy" >&2
mypy
echo "== pytest" >&2
exec pytest "$@"
