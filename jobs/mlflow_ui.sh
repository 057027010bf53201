#!/usr/bin/env bash
# Browse a sweep's MLflow store on the cluster head from this machine:
#   jobs/mlflow_ui.sh SWEEP      then open http://127.0.0.1:5000
# The UI listens on the head's 127.0.0.1 only; the port reaches you through ssh.
set -euo pipefail
sweep="${1:?usage: jobs/mlflow_ui.sh SWEEP}"
: "${SFS_OUT_DIR:=/home/ubuntu/sfs-runs}"
cd "$(dirname "$0")/.."
exec ray exec ray_cluster.yaml --port-forward 5000 \
  "/home/ubuntu/sfs/.venv/bin/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$SFS_OUT_DIR/$sweep/mlflow.db"
