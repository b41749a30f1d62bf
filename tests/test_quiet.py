"""Start-up noise: no libtpu or TensorFlow C++ lines on a CPU machine; accelerators and user settings kept."""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

from polyglot_jax import configs as config_lib
from polyglot_jax import quiet
from conftest import REPO

# Lines seen before polyglot_jax/quiet.py, on a CPU machine with the test extra (libtpu) installed.
NOISE = [
    "Failed to find host bounds",  # libtpu, on every jax start
    "TPU_WORKER_HOSTNAMES",  # libtpu: INVALID_ARGUMENT ... common_lib.cc
    "InitGoogle()",  # libtpu: "Logging before InitGoogle() is written to STDERR"
    "absl::InitializeLog()",  # TensorFlow's import: "All log messages before absl::InitializeLog() ..."
    "oneDNN custom operations",  # TensorFlow's import, port.cc
    "cudart_stub",  # TensorFlow's import: "Could not find cuda drivers on your machine"
    "cuInit",  # TensorFlow's device set-up, cuda_platform.cc
    "cpu_feature_guard",
]
# Any C++ (absl / tsl) log line: "I0000 00:00:1795967315.888429    4860 port.cc:153] ...".
CPP_LOG_LINE = re.compile(r"^(?:[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ |\d{4}-\d\d-\d\d \d\d:\d\d:[\d.]+: [IWEF] )"
                          r"\S+:\d+\] ", re.MULTILINE)

LIBTPU = importlib.util.find_spec("libtpu") is not None


def newcomer_env(**extra):
  """os.environ without the settings this test session made (JAX_*, TF_CPP_*, XLA_FLAGS).

  What jax, libtpu and TensorFlow set on import (TPU_SKIP_MDS_QUERY, TPU_ML_PLATFORM, ...) stays: a
  child of a process that loaded them inherits it too.

  ALLOW_MULTIPLE_LIBTPU_LOAD=1: libtpu initialises (and prints) even while another process on the
  machine holds /tmp/libtpu_lockfile, so a regression shows whatever else runs.
  """
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_", "TF_CPP_", "XLA_FLAGS"))}
  env.update(PYTHONPATH=REPO, ALLOW_MULTIPLE_LIBTPU_LOAD="1", **extra)
  return env


def run_python(code, env, timeout=120):
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=timeout)


def assert_quiet(output):
  seen = [pattern for pattern in NOISE if pattern in output]
  assert not seen, f"start-up noise {seen} in:\n{output[-3000:]}"
  assert not CPP_LOG_LINE.search(output), f"a C++ log line in:\n{output[-3000:]}"


# --- the decision: force the CPU only where jax could not use anything else ---------------------


def test_no_tpu_and_no_other_plugin_skips_libtpu():
  assert quiet.jax_defaults({}, libtpu_installed=True, tpu_attached=False, accelerator_plugin=False) == \
      {"JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("environ, kw", [
    ({}, dict(libtpu_installed=True, tpu_attached=True, accelerator_plugin=False)),  # TPU VM
    ({}, dict(libtpu_installed=True, tpu_attached=False, accelerator_plugin=True)),  # GPU machine
    ({}, dict(libtpu_installed=True, tpu_attached=True, accelerator_plugin=True)),
    ({}, dict(libtpu_installed=False, tpu_attached=False, accelerator_plugin=False)),  # nothing to skip
    ({"JAX_PLATFORMS": "tpu"}, dict(libtpu_installed=True, tpu_attached=False, accelerator_plugin=False)),
    ({"JAX_PLATFORMS": ""}, dict(libtpu_installed=True, tpu_attached=False, accelerator_plugin=False)),
], ids=["tpu", "gpu-plugin", "tpu-and-gpu", "no-libtpu", "user-set", "user-set-empty"])
def test_accelerators_and_user_settings_are_left_alone(environ, kw):
  assert quiet.jax_defaults(environ, **kw) == {}


def test_setup_only_sets_defaults(monkeypatch):
  monkeypatch.setattr(quiet, "_user_tf_log_level", quiet._user_tf_log_level)
  monkeypatch.setattr(quiet, "tpu_attached", lambda environ: False)
  monkeypatch.setattr(quiet, "accelerator_plugin_installed", lambda environ: False)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "libtpu" else None)
  environ = {}
  assert quiet.setup(environ) == {"JAX_PLATFORMS": "cpu"}
  assert environ == {"JAX_PLATFORMS": "cpu"}
  environ = {"JAX_PLATFORMS": "cuda", "TF_CPP_MIN_LOG_LEVEL": "0"}
  assert quiet.setup(environ) == {}
  assert environ == {"JAX_PLATFORMS": "cuda", "TF_CPP_MIN_LOG_LEVEL": "0"}
  assert quiet._user_tf_log_level == "0"
  monkeypatch.setattr(quiet, "tpu_attached", lambda environ: True)
  environ = {}
  assert quiet.setup(environ) == {} and environ == {}


def _fake_pci(root, name, vendor, device, klass):
  d = root / "sys" / "bus" / "pci" / "devices" / name
  d.mkdir(parents=True)
  for key, value in (("vendor", vendor), ("device", device), ("class", klass)):
    (d / key).write_text(value + "\n")


def test_tpu_detection(tmp_path):
  (tmp_path / "dev").mkdir()
  _fake_pci(tmp_path, "0000:00:04.0", "0x1ae0", "0x0042", "0x020000")  # gVNIC: a GCE CPU VM
  _fake_pci(tmp_path, "0000:00:05.0", "0x1ae0", "0x001f", "0x010802")  # Google NVMe disk
  _fake_pci(tmp_path, "0000:00:06.0", "0x10de", "0x2335", "0x030200")  # an NVIDIA GPU
  assert not quiet.tpu_attached({}, root=str(tmp_path))
  # Set by libtpu's import, by jax finding no chip and by TensorFlow's import, on any machine.
  assert not quiet.tpu_attached({"TPU_LIBRARY_PATH": "/x/libtpu.so", "TPU_SKIP_MDS_QUERY": "1",
                                 "TPU_ML_PLATFORM": "Tensorflow", "TPU_ML_PLATFORM_VERSION": "2.21.0"},
                                root=str(tmp_path))
  (tmp_path / "dev" / "vfio").mkdir()
  (tmp_path / "dev" / "vfio" / "vfio").write_text("")  # The vfio control node alone is no TPU.
  assert not quiet.tpu_attached({}, root=str(tmp_path))
  for env in ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, {"TPU_ACCELERATOR_TYPE": "v5litepod-8"},
              {"JAX_FORCE_TPU_INIT": "1"}, {"LIBTPU_INIT_ARGS": "--xla_tpu_foo"}):
    assert quiet.tpu_attached(env, root=str(tmp_path)), env


@pytest.mark.parametrize("make", [
    lambda root: (root / "dev" / "accel0").write_text(""),  # TPU v2-v4
    lambda root: ((root / "dev" / "vfio").mkdir(), (root / "dev" / "vfio" / "0").write_text("")),  # v5e+
    lambda root: _fake_pci(root, "0000:00:07.0", "0x1ae0", "0x006f", "0x120000"),  # v6e, jax's id
    lambda root: _fake_pci(root, "0000:00:07.0", "0x1ae0", "0x0999", "0x120000"),  # a future id
], ids=["accel", "vfio-group", "pci", "pci-unknown-id"])
def test_tpu_hardware_is_detected(tmp_path, make):
  (tmp_path / "dev").mkdir()
  make(tmp_path)
  assert quiet.tpu_attached({}, root=str(tmp_path))


# --- the TensorFlow window: its level while it loads, and its early lines held to it -------------

EARLY_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795967315.888429    4860 port.cc:153] oneDNN custom operations are on. You may see ...",
    "I0000 00:00:1795967315.889419    4860 cudart_stub.cc:31] Could not find cuda drivers on your machine",
    "E0000 00:00:1795967319.577992    4860 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    "2025-09-17 14:44:05.157831: W external/local_xla/xla/tsl/foo.cc:32] a tsl warning",
    "F0000 00:00:1795967319.577992    4860 foo.cc:1] a fatal line is always shown",
    "a line of Python's own stderr",
]


@pytest.mark.parametrize("level, kept", [
    (0, EARLY_LINES), (1, EARLY_LINES[3:]), (2, EARLY_LINES[3:4] + EARLY_LINES[5:]), (3, EARLY_LINES[5:])])
def test_keep_line(level, kept):
  assert [line for line in EARLY_LINES if quiet.keep_line((line + "\n").encode(), level)] == kept


@pytest.mark.parametrize("user_level, kept", [(None, EARLY_LINES[5:]), ("1", EARLY_LINES[3:]), ("0", EARLY_LINES)],
                         ids=["default", "user-1", "user-0"])
def test_tensorflow_window_filters_file_descriptor_2(user_level, kept):
  """C++ writes (os.write on fd 2) pass the filter process; the level is restored after the window."""
  env = newcomer_env(**({} if user_level is None else {"TF_CPP_MIN_LOG_LEVEL": user_level}))
  result = run_python(f"""
      import os, sys
      import polyglot_jax, jax  # jax setdefaults TF_CPP_MIN_LOG_LEVEL=1
      from polyglot_jax import quiet
      before = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
      with quiet.tensorflow_logs():
        inside = os.environ["TF_CPP_MIN_LOG_LEVEL"]
        os.write(2, {"".join(line + chr(10) for line in EARLY_LINES).encode()!r})
      print(before, inside, os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
      """, env)
  assert result.returncode == 0, result.stderr
  assert result.stderr.splitlines() == kept
  before = user_level or "1"
  assert result.stdout.split() == [before, user_level or "3", before]


# --- real commands, as a newcomer runs them ----------------------------------------------------


def test_jax_starts_quietly_and_keeps_its_platform():
  env = newcomer_env()
  result = run_python("""
      import os
      import polyglot_jax, jax
      print("backend", jax.default_backend(), os.environ.get("JAX_PLATFORMS"))
      """, env)
  assert result.returncode == 0, result.stderr
  expected = quiet.jax_defaults(env, libtpu_installed=LIBTPU, tpu_attached=quiet.tpu_attached(env),
                                accelerator_plugin=quiet.accelerator_plugin_installed(env))
  backend = result.stdout.split()[1]
  assert result.stdout.split()[2] == expected.get("JAX_PLATFORMS", "None")
  if expected:  # Forced to the CPU: only where jax would have ended there anyway.
    assert backend == "cpu"
  assert_quiet(result.stdout + result.stderr)


def test_tensorboard_writer_starts_quietly(tmp_path):
  """clu's TensorBoard writer loads TensorFlow: its import lines stay off the terminal."""
  result = run_python(f"""
      import polyglot_jax
      from polyglot_jax.train import metrics
      writer = metrics.make_writer({str(tmp_path)!r})
      writer.write_scalars(1, {{"loss": 1.0}})
      writer.close()
      print("wrote", len(list(__import__("pathlib").Path({str(tmp_path)!r}).rglob("*tfevents*"))))
      """, newcomer_env())
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["wrote", "1"]
  assert_quiet(result.stdout + result.stderr)


@pytest.mark.skipif(not LIBTPU, reason="libtpu (the test or tpu extra) is not installed")
def test_libtpu_is_still_tried_when_the_user_says_so():
  """JAX_PLATFORMS='' (jax's own choice) is the user's: libtpu starts and still prints (the control)."""
  env = newcomer_env(JAX_PLATFORMS="")
  if quiet.tpu_attached(env) or quiet.accelerator_plugin_installed(env):
    pytest.skip("an accelerator is here: libtpu's start is not noise")
  result = run_python("import polyglot_jax, jax; jax.devices()", env)
  assert result.returncode == 0, result.stderr
  assert "Failed to find host bounds" in result.stderr or "TPU_WORKER_HOSTNAMES" in result.stderr, result.stderr


@pytest.mark.slow
def test_demo_like_training_prints_only_its_own_lines(make_config, tmp_path):
  config = make_config(train__num_steps=10, train__log_every_steps=5, checkpoint__every_steps=0)
  config_path = tmp_path / "tiny.py"
  config_path.write_text("import json\nfrom polyglot_jax.configs import config_from_dict\n\n\ndef get_config():\n"
                         f"  return config_from_dict(json.loads({config_lib.to_json(config)!r}))\n")
  result = subprocess.run([sys.executable, "-m", "polyglot_jax", "train", "--config", config_path,
                           "--workdir", str(tmp_path / "w")], capture_output=True, text=True,
                          env=newcomer_env(), cwd=REPO, timeout=240)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 10/10 | loss" in result.stdout, result.stdout[-3000:]
  assert_quiet(result.stdout + result.stderr)
