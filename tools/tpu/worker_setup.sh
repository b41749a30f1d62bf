#!/usr/bin/env bash
# Runs on each TPU VM worker (tools/tpu/install.sh calls it): a Python 3.11
# venv with polyglot_jax[tpu], and gcsfuse for gs:// workdirs.
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
  --no-gcsfuse     skip gcsfuse (only local workdirs then)
  --dry-run        print the commands, run nothing
  -h, --help       this text
USAGE
}

NO_GCSFUSE=0
parse_flags "repo-dir venv" "no-gcsfuse" "$@"
REPO_DIR=${REPO_DIR:-$REMOTE_DIR}
[[ $REPO_DIR == /* ]] || REPO_DIR="$HOME/$REPO_DIR"
[[ $VENV == /* ]] || VENV="$HOME/$VENV"
uv="$HOME/.local/bin/uv"

[[ -x $uv ]] || run python3 -m pip install --user --quiet --upgrade uv
run "$uv" venv --allow-existing --python 3.11 "$VENV"
run "$uv" pip install --python "$VENV/bin/python" -e "${REPO_DIR}[tpu]"

# A multi-host checkpoint is written by every host into one directory, so a
# slice's workdir lives on GCS, mounted with gcsfuse (worker_train.sh).
if ((!NO_GCSFUSE)) && ! command -v gcsfuse >/dev/null; then
  # shellcheck source=/dev/null  # The OS's release file, read for its codename.
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-jammy}")
  run sudo curl -fsSL -o /usr/share/keyrings/cloud.google.asc https://packages.cloud.google.com/apt/doc/apt-key.gpg
  apt_line="deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$codename main"
  run sudo sh -c "echo '$apt_line' > /etc/apt/sources.list.d/gcsfuse.list"
  run sudo apt-get update -qq
  run sudo apt-get install -y -qq gcsfuse
fi
