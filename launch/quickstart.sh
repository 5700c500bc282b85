#!/usr/bin/env bash
# Sets up .venv and runs the whole pipeline on the embedded default pool (the README's
# first command). Extra flags go to launch/main.py, e.g. --config.sweep.chunk_size=16.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
.venv/bin/python launch/main.py --config=experiments/quickstart/config.py \
    --workdir="${WORKDIR:-workdir/quickstart}" --stage=all "$@"
