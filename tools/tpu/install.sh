#!/usr/bin/env bash
# Installs polyglot_jax on every worker of a TPU VM slice.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: tools/tpu/install.sh --name NAME --zone ZONE [--repo URL] [flags] [-- GCLOUD_FLAGS...]

On every worker (one ssh with --worker=all): clones the repository (or
fetches the branch into an existing clone), then runs
tools/tpu/worker_setup.sh from it, which builds a Python 3.11 venv with
polyglot_jax[tpu] (libtpu). gs:// workdirs need no mount: the trainer
writes GCS natively.
Run it again after pushing changes: every worker moves to the branch head.

  --name NAME          TPU VM name
  --zone ZONE          its zone
  --project PROJECT    Google Cloud project (default: gcloud's)
  --repo URL           git URL the workers can clone (default: this
                       checkout's origin)
  --branch BRANCH      branch or tag to install (default: main)
  --remote-dir DIR     clone location on the workers, relative to the home
                       directory (default: polyglot_jax)
  --venv DIR           venv on the workers, relative to the home directory
                       (default: polyglot_venv)
  --dry-run            print the gcloud commands, run nothing
  -h, --help           this text

Each flag --foo-bar has an environment default POLYGLOT_FOO_BAR.
Anything after -- goes to gcloud as is.
USAGE
}

parse_flags "name zone project repo branch remote-dir venv" "" "$@"
if [[ -z $REPO ]]; then
  REPO=$(git -C "$HERE" remote get-url origin 2>/dev/null) || die "give --repo URL (this checkout has no origin)"
fi
require NAME ZONE REPO BRANCH
need_gcloud

dir=$(quote_word "$REMOTE_DIR")
branch=$(quote_word "$BRANCH")
remote="set -euo pipefail; if [ -d $dir/.git ]; then git -C $dir fetch --depth=1 origin $branch"
remote+=" && git -C $dir checkout --force FETCH_HEAD; else git clone --depth=1 --branch $branch"
remote+=" $(quote_word "$REPO") $dir; fi; bash $dir/tools/tpu/worker_setup.sh --repo-dir $dir"
remote+=" --venv $(quote_word "$VENV")"
ssh_workers all "$remote"
