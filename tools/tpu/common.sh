# shellcheck shell=bash
# shellcheck disable=SC2034  # Settings are read by the scripts that source this file.
# Sourced by tools/tpu/*.sh: settings, flag parsing, and `run`, the one place a
# command is printed (--dry-run) or run. No bash-4-only features: macOS has bash 3.2.

# Every flag --foo-bar has an environment default POLYGLOT_FOO_BAR, so a shell
# profile can hold the project and zone and each command stays short.
NAME=${POLYGLOT_NAME:-}
ZONE=${POLYGLOT_ZONE:-}
PROJECT=${POLYGLOT_PROJECT:-}
ACCELERATOR=${POLYGLOT_ACCELERATOR:-}
RUNTIME=${POLYGLOT_RUNTIME:-}
REPO=${POLYGLOT_REPO:-}
BRANCH=${POLYGLOT_BRANCH:-main}
CONFIG=${POLYGLOT_CONFIG:-configs/demo.py}
WORKDIR=${POLYGLOT_WORKDIR:-}
# Paths on the workers, relative to the remote home directory.
REMOTE_DIR=${POLYGLOT_REMOTE_DIR:-polyglot_jax}
VENV=${POLYGLOT_VENV:-polyglot_venv}
LOG=${POLYGLOT_LOG:-polyglot_train.log}

DRY_RUN=0
OVERRIDES=()  # --config.a.b=v flags, for polyglot-jax train.
EXTRA=()      # Everything after --, handed to gcloud as is.

die() {
  echo "error: $*" >&2
  exit 2
}

# parse_flags "VALUE_FLAGS" "SWITCHES" "$@": --foo-bar VALUE or --foo-bar=VALUE
# sets FOO_BAR; a switch sets its variable to 1. Each script defines usage().
parse_flags() {
  local values=" $1 " switches=" $2 " arg name value var
  shift 2
  while (($#)); do
    arg=$1
    shift
    case $arg in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1; continue ;;
      --) EXTRA=("$@"); break ;;
      --config.*)
        [[ $values == *" config.* "* ]] || die "$arg: config overrides go to train.sh"
        if [[ $arg != *=* ]]; then
          (($#)) || die "$arg needs a value (--config.key=value)"
          arg="$arg=$1"
          shift
        fi
        OVERRIDES+=("$arg")
        continue ;;
      --*=*) name=${arg%%=*} ;;
      --*) name=$arg ;;
      *) die "unexpected argument '$arg'; see --help" ;;
    esac
    name=${name#--}
    if [[ $switches == *" $name "* ]]; then
      [[ $arg != *=* ]] || die "--$name takes no value"
      value=1
    elif [[ $values == *" $name "* ]]; then
      if [[ $arg == *=* ]]; then
        value=${arg#*=}
      else
        (($#)) || die "--$name needs a value"
        value=$1
        shift
      fi
    else
      die "unknown flag --$name; see --help"
    fi
    var=$(echo "$name" | tr '[:lower:]-' '[:upper:]_')
    printf -v "$var" '%s' "$value"
  done
}

# require VAR...: each must be set by its flag or its POLYGLOT_ variable.
require() {
  local var flag
  for var in "$@"; do
    if [[ -z ${!var} ]]; then
      flag=$(echo "$var" | tr '[:upper:]_' '[:lower:]-')
      die "give --$flag or set POLYGLOT_$var; see --help"
    fi
  done
}

# Shell-quotes one word so the printed command can be pasted: bare when safe,
# else in single quotes; in --flag=value only the value is quoted.
quote_word() {
  local word=$1 prefix='' safe='^[A-Za-z0-9_./:=@%+,-]+$' flag='^(--[A-Za-z0-9.-]+=)(.*)$'
  if [[ $word =~ $flag ]]; then
    prefix=${BASH_REMATCH[1]}
    word=${BASH_REMATCH[2]}
  fi
  if [[ $word =~ $safe ]]; then
    printf '%s%s' "$prefix" "$word"
  else
    printf "%s'%s'" "$prefix" "${word//\'/\'\\\'\'}"
  fi
}

quote() {
  local word line=''
  for word in "$@"; do
    line="$line${line:+ }$(quote_word "$word")"
  done
  printf '%s\n' "$line"
}

# run CMD ARGS...: with --dry-run prints the command (stdout holds nothing
# else); otherwise echoes it to stderr and runs it.
run() {
  if ((DRY_RUN)); then
    quote "$@"
    return 0
  fi
  echo "+ $(quote "$@")" >&2
  "$@"
}

need_gcloud() {
  ((DRY_RUN)) || command -v gcloud >/dev/null ||
    die "gcloud is not installed (https://cloud.google.com/sdk/docs/install); --dry-run prints the commands"
}

# The --project/--zone flags every gcloud tpu command takes.
location_flags() {
  LOCATION=()
  [[ -z $PROJECT ]] || LOCATION+=("--project=$PROJECT")
  LOCATION+=("--zone=$ZONE")
}

# ssh_workers WORKERS COMMAND: runs COMMAND (a remote shell line, started in
# the remote home directory) on the given workers (all, 0, 0,1, ...).
ssh_workers() {
  location_flags
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$1" --command="$2" ${EXTRA[@]+"${EXTRA[@]}"}
}
