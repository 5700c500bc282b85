#!/usr/bin/env bash
# Sets up .venv and runs the test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=4"
# Two workers; a module marked with an xdist_group runs on one of them, so its module
# fixtures (and cached fits) are built once.
.venv/bin/python -m pytest -q -n 2 --dist loadgroup tests "$@"
