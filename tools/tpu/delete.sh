#!/usr/bin/env bash
# Deletes a TPU VM slice (or its queued resource, with the slice).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: tools/tpu/delete.sh --name NAME --zone ZONE [--queued] [--yes] [flags]

Deletes the TPU VM and its workers' disks (a gs:// workdir stays). gcloud
asks to confirm unless --yes.

  --name NAME        TPU VM name
  --zone ZONE        its zone
  --project PROJECT  Google Cloud project (default: gcloud's)
  --queued           it was made with create.sh --queued: delete the queued
                     resource and, with --force, its slice
  --yes              do not ask (gcloud --quiet)
  --dry-run          print the gcloud commands, run nothing
  -h, --help         this text

Each flag --foo-bar has an environment default POLYGLOT_FOO_BAR.
Anything after -- goes to gcloud as is.
USAGE
}

QUEUED=0
YES=0
parse_flags "name zone project" "queued yes" "$@"
require NAME ZONE
need_gcloud
location_flags
quiet=()
((YES)) && quiet=(--quiet)
if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force ${quiet[@]+"${quiet[@]}"} \
    ${EXTRA[@]+"${EXTRA[@]}"}
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" ${quiet[@]+"${quiet[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
fi
