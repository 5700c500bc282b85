#!/usr/bin/env bash
# Runs the pipeline as N JAX processes on this machine (a local stand-in for a multi-host
# job): each process gets DEVICES fake CPU devices and joins the others through
# jax.distributed at 127.0.0.1:PORT. Only process 0 writes artifacts.
#
#   N=2 DEVICES=2 bash launch/multihost_local.sh --config=experiments/quickstart/config.py:smoke \
#       --workdir=/tmp/mh --stage=target
#
# Stop it with Ctrl-C: every process is killed with SIGKILL (jax.distributed traps SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-2}"
DEVICES="${DEVICES:-1}"
PORT="${PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
PY="${PY:-.venv/bin/python}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM EXIT
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES}" JAX_PLATFORMS=cpu \
    "$PY" launch/main.py --coordinator_address="127.0.0.1:${PORT}" \
    --num_processes="$N" --process_id="$i" "$@" \
    > >(sed "s/^/[p$i] /") 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
trap - EXIT
exit "$status"
