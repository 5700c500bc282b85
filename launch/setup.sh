#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs the package with its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-test.txt
.venv/bin/python -m pip install -q --no-deps -e .
