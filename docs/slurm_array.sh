#!/bin/bash
# bids_muscle on a SLURM cluster: one participant per array task. Task N
# processes the participant on row N of participants.tsv (the header row not
# counted), inside a Singularity/Apptainer image when SIF names one, else with
# the native installation (bids_muscle on PATH, or BIDS_MUSCLE=/path/to/bids_muscle).
#
#   n=$(( $(wc -l < /data/bids/participants.tsv) - 1 ))
#   sbatch --array=1-"$n" docs/slurm_array.sh              # add bids_muscle options after the script name
#   sbatch --array=1-"$n" docs/slurm_array.sh --networks unet2d hrnet
#
# and once every task has finished, the group level (one short job):
#   singularity run --cleanenv -B /data/bids -B /data/out bids_muscle-0.1.0.sif \
#       /data/bids /data/out group -w /scratch/$USER/bids_muscle_work/group
#
# Paths are taken from the environment (sbatch passes it on), e.g.
#   BIDS_DIR=/data/bids OUT_DIR=/data/out SIF=$HOME/bids_muscle-0.1.0.sif sbatch --array=1-40 docs/slurm_array.sh
#   BIDS_DIR=/data/bids OUT_DIR=/data/out BIDS_MUSCLE=/shared/venv/bin/bids_muscle sbatch --array=1-40 docs/slurm_array.sh
#SBATCH --job-name=bids_muscle
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --output=bids_muscle_%A_%a.log
set -euo pipefail

BIDS_DIR=${BIDS_DIR:-/data/bids}
OUT_DIR=${OUT_DIR:-/data/out}
WORK_ROOT=${WORK_ROOT:-/scratch/${USER:-$(id -un)}/bids_muscle_work}
SIF=${SIF:-}
BIDS_MUSCLE=${BIDS_MUSCLE:-bids_muscle}
SINGULARITY=${SINGULARITY:-$(command -v apptainer || command -v singularity || echo singularity)}
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=1-N (N = number of participants)}"

participants="$BIDS_DIR/participants.tsv"
if [[ ! -f $participants ]]; then
    echo "$participants: file not found" >&2
    exit 2
fi

# the participant_id column, wherever it is; tolerate Windows line endings
participant_id=$(awk -F'\t' -v row="$((SLURM_ARRAY_TASK_ID + 1))" '
    { sub(/\r$/, "") }
    NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") col = i; next }
    NR == row && col { print $col }
' "$participants")
if [[ -z $participant_id ]]; then
    echo "$participants: no participant on row $SLURM_ARRAY_TASK_ID (or no participant_id column)" >&2
    exit 2
fi
label=${participant_id#sub-}

# one nipype work folder per participant, so that array tasks never share one
work_dir="$WORK_ROOT/sub-$label"
mkdir -p "$OUT_DIR" "$work_dir"

# memory for the MultiProc scheduler: what SLURM granted (MB), less 1 GB of headroom
mem_gb=$(( ${SLURM_MEM_PER_NODE:-8192} / 1024 - 1 ))
(( mem_gb >= 1 )) || mem_gb=1

args=("$BIDS_DIR" "$OUT_DIR" participant --participant-label "$label"
      --nprocs "${SLURM_CPUS_PER_TASK:-2}" --omp-nthreads 1 --mem-gb "$mem_gb" -w "$work_dir" "$@")
if [[ -n $SIF ]]; then
    echo "task $SLURM_ARRAY_TASK_ID: sub-$label on $(hostname) in $SIF"
    exec "$SINGULARITY" run --cleanenv -B "$BIDS_DIR:$BIDS_DIR:ro" -B "$OUT_DIR" -B "$WORK_ROOT" "$SIF" "${args[@]}"
fi
if ! command -v "$BIDS_MUSCLE" >/dev/null; then
    echo "$BIDS_MUSCLE: not found; set SIF=<image.sif> to use a container, or BIDS_MUSCLE=<path to bids_muscle>" >&2
    exit 2
fi
echo "task $SLURM_ARRAY_TASK_ID: sub-$label on $(hostname) with $(command -v "$BIDS_MUSCLE")"
exec "$BIDS_MUSCLE" "${args[@]}"
