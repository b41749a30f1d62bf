#!/usr/bin/env bash
# Runs on each TPU VM worker (tools/tpu/install.sh calls it): a Python 3.11
# venv with polyglot_jax[tpu]. gs:// workdirs need nothing more: the trainer
# writes GCS itself (orbax, tf.io.gfile), so gcsfuse is no longer installed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: tools/tpu/worker_setup.sh [--repo-dir DIR] [--venv DIR] [--no-gcsfuse] [--dry-run]

Runs on a TPU VM worker. TPU VM images ship an older Python than the 3.11
polyglot_jax needs, so uv (installed with pip --user) fetches a standalone
Python 3.11 for the venv. Relative paths are under the home directory.

  --repo-dir DIR   the polyglot_jax clone (default: polyglot_jax)
  --venv DIR       the venv to create or update (default: polyglot_venv)
  --no-gcsfuse     ignored (kept for old command lines; gcsfuse is no longer
                   installed: the trainer writes gs:// workdirs itself)
  --dry-run        print the commands, run nothing
  -h, --help       this text
USAGE
}

parse_flags "repo-dir venv" "no-gcsfuse" "$@"  # --no-gcsfuse sets NO_GCSFUSE, read by nothing now.
REPO_DIR=${REPO_DIR:-$REMOTE_DIR}
[[ $REPO_DIR == /* ]] || REPO_DIR="$HOME/$REPO_DIR"
[[ $VENV == /* ]] || VENV="$HOME/$VENV"
uv="$HOME/.local/bin/uv"

[[ -x $uv ]] || run python3 -m pip install --user --quiet --upgrade uv
run "$uv" venv --allow-existing --python 3.11 "$VENV"
run "$uv" pip install --python "$VENV/bin/python" -e "${REPO_DIR}[tpu]"
