#!/usr/bin/env bash
# A batch of specs spread over a Slurm job array: task I of N renders every N-th spec of the
# sorted batch (`--shard I/N`). Requeued or re-submitted tasks skip finished outputs and
# continue unfinished ones from their checkpoints (`--resume`).
#   sbatch --array=0-3 deploy/slurm-array.sh specs/
#SBATCH --job-name=tessera
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=tessera-%A_%a.log
set -euo pipefail

specs="${1:?usage: sbatch --array=0-N deploy/slurm-array.sh SPEC_FOLDER_OR_FILES...}"
shift || true
# Shards are counted from the array's first index, so --array=1-4 works like --array=0-3 (the
# array must be contiguous: no step such as 0-9:2).
: "${SLURM_ARRAY_TASK_ID:?run this script as a Slurm array job (sbatch --array=...)}"
index=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
count="${SLURM_ARRAY_TASK_COUNT:?run this script as a Slurm array job (sbatch --array=...)}"
tessera="${TESSERA:-tessera}"

exec "$tessera" render "$specs" "$@" --resume --json --shard "${index}/${count}"
