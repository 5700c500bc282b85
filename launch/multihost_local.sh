#!/usr/bin/env bash
# Runs the pipeline as N JAX processes on this machine (a local stand-in for a multi-host
# job): each process gets DEVICES fake CPU devices and joins the others through
# jax.distributed at 127.0.0.1:PORT (default: a free port). Only process 0 writes
# artifacts. Each output line is prefixed with its process, [p0], [p1], ...
#
#   N=2 DEVICES=2 bash launch/multihost_local.sh --config=experiments/quickstart/config.py:smoke \
#       --workdir=/tmp/mh --stage=target
#
# The processes are watched as one job (launch/local_processes.py): when one exits
# non-zero, a line on stderr names it ("process 1 of 2 (pid 1234) failed with exit code
# 1; stopping the others"), the others are killed with SIGKILL (jax.distributed traps
# SIGTERM, and they would otherwise wait for the dead one in a collective) and the script
# exits with that process's code. Ctrl-C kills every process.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
exec "$PY" launch/local_processes.py --num_processes="${N:-2}" \
  --devices_per_process="${DEVICES:-1}" --port="${PORT:-0}" -- "$@"
