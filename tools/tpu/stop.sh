#!/usr/bin/env bash
# Stops training on every worker with SIGTERM: the trainer saves a checkpoint first.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: tools/tpu/stop.sh --name NAME --zone ZONE [flags]

Sends SIGTERM to the training process on every worker (the pid file that
worker_train.sh wrote). The trainer treats it as a preemption: it saves a
checkpoint and exits; train.sh with the same workdir resumes from it.

  --name NAME        TPU VM name
  --zone ZONE        its zone
  --project PROJECT  Google Cloud project (default: gcloud's)
  --log FILE         log on the workers (default: polyglot_train.log; the
                     pid file is beside it)
  --dry-run          print the gcloud commands, run nothing
  -h, --help         this text

Each flag --foo-bar has an environment default POLYGLOT_FOO_BAR.
Anything after -- goes to gcloud as is.
USAGE
}

parse_flags "name zone project log" "" "$@"
require NAME ZONE
need_gcloud
pidfile=$(quote_word "${LOG%.log}.pid")
ssh_workers all "if kill -TERM \"\$(cat $pidfile 2>/dev/null)\" 2>/dev/null; then echo \"\$(hostname): stopping\"; \
else echo \"\$(hostname): no training running\"; fi"
