#!/usr/bin/env bash
# Creates a TPU VM slice, or queues one, for polyglot_jax.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: tools/tpu/create.sh --name NAME --zone ZONE --accelerator TYPE [flags] [-- GCLOUD_FLAGS...]

Creates a TPU VM slice (all its workers) with `gcloud compute tpus tpu-vm create`;
with --queued, a queued resource of the same name that Cloud TPU fills when
capacity is free (watch it with the printed describe command).

  --name NAME          TPU VM name
  --zone ZONE          e.g. us-east5-a
  --project PROJECT    Google Cloud project (default: gcloud's)
  --accelerator TYPE   e.g. v5p-32, v5litepod-16, v4-8, v6e-8
  --runtime VERSION    TPU software version (default: from the accelerator,
                       v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite,
                       v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --spot               spot capacity: cheaper, can be preempted (the trainer
                       checkpoints on SIGTERM; rerun train.sh to resume)
  --queued             create a queued resource instead of the VM directly
  --dry-run            print the gcloud commands, run nothing
  -h, --help           this text

Each flag --foo-bar has an environment default POLYGLOT_FOO_BAR.
Anything after -- goes to gcloud as is (e.g. -- --network=my-net).
USAGE
}

SPOT=0
QUEUED=0
parse_flags "name zone project accelerator runtime" "spot queued" "$@"
require NAME ZONE ACCELERATOR
if [[ -z $RUNTIME ]]; then
  case $ACCELERATOR in
    v4-*) RUNTIME=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) die "no default runtime for accelerator '$ACCELERATOR'; give --runtime" ;;
  esac
fi
need_gcloud
location_flags
capacity=()
((SPOT)) && capacity=(--spot)

if ((QUEUED)); then
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOCATION[@]}" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" ${capacity[@]+"${capacity[@]}"} \
    ${EXTRA[@]+"${EXTRA[@]}"}
  echo "queued; the slice is ready when this says ACTIVE: $(quote gcloud compute tpus queued-resources \
describe "$NAME" "${LOCATION[@]}" --format='value(state.state)')" >&2
else
  run gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" ${capacity[@]+"${capacity[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
fi
