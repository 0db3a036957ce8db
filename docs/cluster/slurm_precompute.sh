#!/usr/bin/env bash
# Influence Explorer precompute on a SLURM cluster: one torchrun per node, one process per GPU.
#
#   sbatch --nodes 4 docs/cluster/slurm_precompute.sh run.toml /shared/cache
#
# The cache folder, the data and the model checkpoint must be on a filesystem every node sees.
# Rerun the same command after a failure: completed gradient-store chunks are reused.
#SBATCH --job-name=influence-precompute
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=influence-precompute-%j.log
set -euo pipefail

CONFIG=${1:?usage: sbatch slurm_precompute.sh RUN.toml CACHE_DIR}
CACHE_DIR=${2:?usage: sbatch slurm_precompute.sh RUN.toml CACHE_DIR}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}

srun torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD_NODE:$PORT" \
    --rdzv-id "$SLURM_JOB_ID" \
    -m precompute.cli precompute --config "$CONFIG" --cache-dir "$CACHE_DIR" --no-progress
