#!/usr/bin/env bash
# SLURM launcher: one JAX process per node (all its GPUs as local devices); process 0's
# node is the jax.distributed coordinator. Submit with, e.g.
#
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm.sh \
#       --config=experiments/quickstart/config.py --workdir=/shared/runs/qs --stage=target
#
# The workdir must be on a filesystem every node sees (checkpoints and artifacts).
#SBATCH --job-name=causalmix
#SBATCH --ntasks-per-node=1
#SBATCH --output=causalmix-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PORT="${PORT:-29500}"
COORD="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):${PORT}"
srun --kill-on-bad-exit=1 bash -c "
  exec .venv/bin/python launch/main.py --coordinator_address=${COORD} \
      --num_processes=\${SLURM_NTASKS} --process_id=\${SLURM_PROCID} $*"
