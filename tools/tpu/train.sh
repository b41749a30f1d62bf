#!/usr/bin/env bash
# Starts training on every worker of a TPU VM slice: the same command everywhere.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: tools/tpu/train.sh --name NAME --zone ZONE --workdir DIR [--config FILE] [--config.a.b=v ...] [flags]

Runs tools/tpu/worker_train.sh on every worker (one ssh with --worker=all):
each joins the multi-host run (coordinator, process count and id from the
TPU metadata) and starts `polyglot-jax train` under nohup, so it outlives
the ssh session. Follow it with logs.sh, stop it (with a checkpoint) with
stop.sh. Rerun the same command to resume from the workdir's checkpoint.

  --name NAME        TPU VM name
  --zone ZONE        its zone
  --project PROJECT  Google Cloud project (default: gcloud's)
  --workdir DIR      gs://BUCKET/PATH (written natively by every worker;
                     needed for multi-host checkpoints) or a worker path
  --config FILE      config file in the clone (default: configs/demo.py)
  --config.a.b=v     config overrides, passed on to polyglot-jax train
  --remote-dir DIR   the clone on the workers (default: polyglot_jax)
  --venv DIR         the venv on the workers (default: polyglot_venv)
  --log FILE         log on each worker (default: polyglot_train.log)
  --foreground       keep the ssh session attached to training
  --dry-run          print the gcloud commands, run nothing
  -h, --help         this text

Each flag --foo-bar has an environment default POLYGLOT_FOO_BAR.
Anything after -- goes to gcloud as is.
USAGE
}

FOREGROUND=0
parse_flags "name zone project workdir config config.* remote-dir venv log" "foreground" "$@"
require NAME ZONE WORKDIR CONFIG
need_gcloud

args=(--repo-dir "$REMOTE_DIR" --venv "$VENV" --log "$LOG" --config "$CONFIG" --workdir "$WORKDIR")
((FOREGROUND)) && args+=(--foreground)
ssh_workers all "bash $(quote_word "$REMOTE_DIR")/tools/tpu/worker_train.sh $(quote "${args[@]}" \
${OVERRIDES[@]+"${OVERRIDES[@]}"})"
