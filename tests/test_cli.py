"""The command line: one-line errors, SIGTERM saves a checkpoint, a rerun resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from polyglot_jax import configs as config_lib
from conftest import REPO


def write_config_file(config, path):
  path.write_text(
      "import json\nfrom polyglot_jax.configs import config_from_dict\n\n\ndef get_config():\n"
      f"  return config_from_dict(json.loads({config_lib.to_json(config)!r}))\n")
  return str(path)


def run_cli(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run([sys.executable, "-m", "polyglot_jax", *args], capture_output=True, text=True,
                        timeout=timeout, env=env, cwd=REPO)


def test_config_typo_is_one_line(tmp_path):
  result = run_cli("train", "--config", "configs/demo.py", "--workdir", str(tmp_path), "--config.model.num_layer=2")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == \
      "error: unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"
  assert "Traceback" not in result.stderr


def test_vocabulary_larger_than_model_is_refused(make_config, tmp_path):
  config_path = write_config_file(make_config(), tmp_path / "tiny.py")
  result = run_cli("train", "--config", config_path, "--workdir", str(tmp_path / "w"), "--config.model.vocab_size=100")
  assert result.returncode == 1
  assert "has 2048 pieces but config.model.vocab_size=100" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_sigterm_saves_and_rerun_resumes(make_config, tmp_path):
  config = make_config(train__num_steps=100000, train__log_every_steps=1, checkpoint__every_steps=0,
                       data__eval_files=())
  config_path = write_config_file(config, tmp_path / "tiny.py")
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.Popen([sys.executable, "-m", "polyglot_jax", "train", "--config", config_path,
                           "--workdir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=REPO)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  stopped = [line for line in out.splitlines() if line.startswith("stopped by SIGTERM at step")]
  assert stopped, out[-2000:]
  step = int(stopped[0].split("step ")[1].split(";")[0])
  assert str(step) in os.listdir(workdir / "checkpoints")
  # Two more steps of the same run (num_steps unchanged: the same compiled step, from the session's cache).
  result = run_cli("train", "--config", config_path, "--workdir", str(workdir),
                   f"--config.train.stop_after_steps={step + 2}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"resumed from checkpoint step {step}" in result.stdout
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert rows[-1]["step"] == step + 2
