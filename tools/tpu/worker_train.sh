#!/usr/bin/env bash
# Runs on each TPU VM worker (tools/tpu/train.sh calls it on all of them):
# joins the multi-host run and starts `polyglot-jax train` in the background.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: tools/tpu/worker_train.sh --workdir DIR [--config FILE] [--config.a.b=v ...] [flags]

Runs on a TPU VM worker. Every worker runs the same command; each learns its
place from the TPU metadata (worker-network-endpoints, agent-worker-number)
and passes it to the trainer as JAX_COORDINATOR_ADDRESS (worker 0, port
8482), JAX_NUM_PROCESSES and JAX_PROCESS_ID. A gs://BUCKET/PATH workdir is
handed to the trainer as is: orbax writes every host's part of each
checkpoint to GCS natively, and metrics, TensorBoard events and config.json
go through tf.io.gfile (no gcsfuse mount; the VM's service account needs
read/write access to the bucket). Training runs under nohup: it outlives
the ssh session; output is appended to the log, the pid written beside it.
Relative paths are under the home directory; --config under the clone.

  --workdir DIR           gs://BUCKET/PATH or a path on the worker
  --config FILE           config file (default: configs/demo.py)
  --config.a.b=v          config overrides, passed to polyglot-jax train
  --repo-dir DIR          the polyglot_jax clone (default: polyglot_jax)
  --venv DIR              the venv from worker_setup.sh (default: polyglot_venv)
  --log FILE              log file (default: polyglot_train.log; pid in .pid)
  --coordinator HOST:PORT, --num-processes N, --process-id I
                          set the run's shape instead of reading the metadata
  --foreground            run in this shell instead of under nohup
  --dry-run               print the commands, run nothing
  -h, --help              this text
USAGE
}

metadata() {
  curl -fs --max-time 10 -H Metadata-Flavor:Google \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

COORDINATOR=''
NUM_PROCESSES=''
PROCESS_ID=''
FOREGROUND=0
parse_flags "workdir config config.* repo-dir venv log coordinator num-processes process-id" "foreground" "$@"
require WORKDIR
REPO_DIR=${REPO_DIR:-$REMOTE_DIR}
[[ $REPO_DIR == /* ]] || REPO_DIR="$HOME/$REPO_DIR"
[[ $VENV == /* ]] || VENV="$HOME/$VENV"
[[ $LOG == /* ]] || LOG="$HOME/$LOG"
[[ $CONFIG == /* ]] || CONFIG="$REPO_DIR/$CONFIG"
pidfile="${LOG%.log}.pid"

# The run's shape. The endpoints are "name:id:ip" or plain host names, worker 0 first.
if [[ -z $COORDINATOR || -z $NUM_PROCESSES || -z $PROCESS_ID ]]; then
  if endpoints=$(metadata worker-network-endpoints) && worker=$(metadata agent-worker-number); then
    IFS=',' read -r -a hosts <<<"$endpoints"
    first=${hosts[0]}
    COORDINATOR=${COORDINATOR:-${first##*:}:8482}
    NUM_PROCESSES=${NUM_PROCESSES:-${#hosts[@]}}
    PROCESS_ID=${PROCESS_ID:-$worker}
  elif ((DRY_RUN)); then
    COORDINATOR=${COORDINATOR:-WORKER0:8482}
    NUM_PROCESSES=${NUM_PROCESSES:-NUM_WORKERS}
    PROCESS_ID=${PROCESS_ID:-WORKER_NUMBER}
  else
    die "no TPU metadata here; give --coordinator, --num-processes and --process-id"
  fi
fi

# A gs:// workdir goes to the trainer unchanged (orbax and tf.io.gfile write GCS
# themselves); a relative local path is under the home directory.
if [[ $WORKDIR == gs://* ]]; then
  [[ $WORKDIR =~ ^gs://[^/]+ ]] || die "--workdir $WORKDIR names no bucket; give gs://BUCKET/PATH"
elif [[ $WORKDIR != /* ]]; then
  WORKDIR="$HOME/$WORKDIR"
fi

if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  die "training is already running on $(hostname) (pid $(cat "$pidfile")); tools/tpu/stop.sh stops it"
fi

train=(env "JAX_COORDINATOR_ADDRESS=$COORDINATOR" "JAX_NUM_PROCESSES=$NUM_PROCESSES" "JAX_PROCESS_ID=$PROCESS_ID"
  "$VENV/bin/polyglot-jax" train --config "$CONFIG" --workdir "$WORKDIR" ${OVERRIDES[@]+"${OVERRIDES[@]}"})
run cd "$REPO_DIR"
if ((FOREGROUND)); then
  run "${train[@]}"
elif ((DRY_RUN)); then
  echo "nohup $(quote "${train[@]}") >> $(quote_word "$LOG") 2>&1 < /dev/null &"
else
  nohup "${train[@]}" >>"$LOG" 2>&1 </dev/null &
  echo $! >"$pidfile"
  echo "$(hostname): process $PROCESS_ID of $NUM_PROCESSES started (pid $!); log $LOG"
fi
