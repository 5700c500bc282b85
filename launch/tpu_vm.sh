#!/usr/bin/env bash
# Cloud TPU VM launcher: runs the same command on every worker of a TPU slice. On TPU
# VMs jax.distributed discovers the coordinator itself, so no address flags are passed.
#
#   TPU=my-v5p-64 ZONE=us-east5-a bash launch/tpu_vm.sh \
#       --config=experiments/quickstart/config.py --workdir=gs://bucket/runs/qs --stage=target
#
# Assumes the repository is checked out at ~/causalmix_jax on every worker and
# `launch/setup.sh` has run there (e.g. `REPO_CMD="bash launch/setup.sh" bash launch/tpu_vm.sh`).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
REPO="${REPO:-~/causalmix_jax}"
CMD="${REPO_CMD:-.venv/bin/python launch/main.py --coordinator_address=auto $*}"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all \
    --command="cd ${REPO} && ${CMD}"
