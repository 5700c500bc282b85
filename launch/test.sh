#!/usr/bin/env bash
# Sets up .venv and runs the test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=4"
.venv/bin/python -m pytest -q -n 2 tests "$@"
