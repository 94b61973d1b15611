#!/usr/bin/env bash
# Installs everything coopledger needs into the repository itself, on a fresh machine:
# a Python virtual environment in .venv (with the package in editable mode and its dev
# dependencies), the npm toolchain (anvil, solc-js) in node_modules from package-lock.json, and
# Debian's chromium for the explorer's browser tests (Playwright drives /usr/bin/chromium).
# Re-running is cheap: each step is skipped when its inputs have not changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python_bin="${PYTHON:-python3}"
stamp_dir=".venv/.coopledger"

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $("$python_bin" --version)" >&2
    "$python_bin" -m venv .venv
fi
mkdir -p "$stamp_dir"

py_stamp="$(sha256sum pyproject.toml | cut -c1-64)"
if [ "$(cat "$stamp_dir/pyproject.sha256" 2>/dev/null)" != "$py_stamp" ]; then
    echo "bootstrap: installing Python packages" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    echo "$py_stamp" > "$stamp_dir/pyproject.sha256"
fi

if [ -f package-lock.json ]; then
    npm_stamp="$(sha256sum package-lock.json | cut -c1-64)"
    if [ ! -d node_modules ] || [ "$(cat "$stamp_dir/npm.sha256" 2>/dev/null)" != "$npm_stamp" ]; then
        echo "bootstrap: installing the npm toolchain (anvil, solc)" >&2
        # Not `npm ci`: the lock records only the linux-amd64 build of anvil (the registry
        # here serves no other platform's package), and `npm ci` refuses a lock without
        # every optional platform entry. `npm install` installs exactly the locked versions.
        npm install --no-audit --no-fund --no-save --loglevel=error
        echo "$npm_stamp" > "$stamp_dir/npm.sha256"
    fi
fi

# The explorer's browser tests drive Debian's chromium through Playwright's executable_path;
# `playwright install` is never run (it downloads browsers, which this network refuses).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing Debian's chromium for the browser tests" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "bootstrap: /usr/bin/chromium is missing and installing it needs root:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium" >&2
        exit 1
    fi
fi
