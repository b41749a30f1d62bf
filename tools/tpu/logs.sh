#!/usr/bin/env bash
# Follows the training log of a TPU VM worker.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: tools/tpu/logs.sh --name NAME --zone ZONE [--worker 0] [--lines 50] [flags]

Prints the last lines of the training log on a worker and follows it
(Ctrl-C stops following; training goes on). Worker 0 is process 0, which
prints progress and the per-language evaluation; --worker=all interleaves
every worker's log (each prints its own errors).

  --name NAME        TPU VM name
  --zone ZONE        its zone
  --project PROJECT  Google Cloud project (default: gcloud's)
  --worker W         0, 1, ... or all (default: 0)
  --lines N          lines of history to show first (default: 50)
  --log FILE         log on the workers (default: polyglot_train.log)
  --dry-run          print the gcloud commands, run nothing
  -h, --help         this text

Each flag --foo-bar has an environment default POLYGLOT_FOO_BAR.
Anything after -- goes to gcloud as is.
USAGE
}

WORKER=${POLYGLOT_WORKER:-0}
LINES=${POLYGLOT_LINES:-50}
parse_flags "name zone project worker lines log" "" "$@"
require NAME ZONE
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines $LINES: give a number of lines"
need_gcloud
ssh_workers "$WORKER" "tail -n $LINES -F $(quote_word "$LOG")"
