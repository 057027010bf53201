#!/usr/bin/env bash
# Submit a sweep to a running Ray cluster (started with `ray up ray_cluster.yaml`).
#
#   jobs/submit.sh SWEEP [hydra overrides...]
#   e.g. jobs/submit.sh full sweep.scale=4
#
# The job's driver runs on the head node and is the only writer of the results store and
# MLflow, so SFS_OUT_DIR must be a path on the head node that outlives the job (the job's
# working directory is temporary). Point RAY_ADDRESS at the dashboard (default: a port
# forwarded to this machine by `ray dashboard ray_cluster.yaml`).
set -euo pipefail
sweep="${1:?usage: jobs/submit.sh SWEEP [overrides...]}"
shift
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
: "${SFS_OUT_DIR:=/home/ubuntu/sfs-runs}"
cd "$(dirname "$0")/.."
# The entrypoint runs in a shell on the head with the PATH `ray start` had, where `python`
# is not the cluster's environment: name the interpreter that ray_cluster.yaml installed sfs
# into. It imports sfs from the uploaded working directory (this checkout).
exec ray job submit --address "$RAY_ADDRESS" --working-dir . \
  -- /home/ubuntu/sfs/.venv/bin/python -m sfs.launch "+sweep=$sweep" cluster=remote \
  "paths.out_dir=$SFS_OUT_DIR" "$@"
