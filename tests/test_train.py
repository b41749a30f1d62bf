"""End to end: train → checkpoint → resume, bit for bit; restore on another mesh; bad workdirs."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.train.checkpoint import Checkpointer, CheckpointError, shape_signature
from polyglot_jax.train.trainer import TrainingError, build, train_and_evaluate

pytestmark = pytest.mark.slow

REQUIRED_KEYS = {"step", "loss", "learning_rate", "grad_norm", "tokens_per_sec", "mfu", "skipped_steps"}


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, demo_data):
  from conftest import tiny_config
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_config(demo_data, train__num_steps=8, checkpoint__every_steps=2)
  summary = train_and_evaluate(config, workdir)
  return config, workdir, summary


def test_loss_goes_down_and_metrics_follow_the_schema(make_config, tmp_path):
  config = make_config(train__num_steps=40, train__log_every_steps=10, checkpoint__every_steps=0,
                       data__eval_max_rows=0, optimizer__learning_rate=1e-2)
  summary = train_and_evaluate(config, str(tmp_path))
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [10, 20, 30, 40]
  for row in rows:
    assert REQUIRED_KEYS <= set(row)
    assert any(k.startswith("loss/") for k in row)
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
  before, after = summary["eval_before"], summary["eval_after"]
  assert set(before) == set(after) and len(after) == 13
  for lang in after:
    assert after[lang] < before[lang] - 0.5, lang
  assert os.path.exists(os.path.join(str(tmp_path), "config.json"))
  assert any(name.startswith("events") for name in os.listdir(os.path.join(str(tmp_path), "tensorboard", "train")))
  with open(os.path.join(str(tmp_path), "eval_metrics.jsonl")) as f:
    last_eval = [json.loads(line) for line in f][-1]
  assert last_eval["step"] == 40 and abs(last_eval["eval/loss/deu"] - after["deu"]) < 1e-6


def test_resume_is_bit_for_bit(straight_run, tmp_path):
  config, _, straight = straight_run
  workdir = str(tmp_path)
  config.unlock()
  config.train.stop_after_steps = 4
  first = train_and_evaluate(config, workdir)
  assert first["stopped"] == "stop_after_steps" and first["step"] == 4
  config.train.stop_after_steps = 0
  resumed = train_and_evaluate(config, workdir)
  assert resumed["step"] == 8
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight["state"]), jax.device_get(resumed["state"]))
  straight_losses = {r["step"]: r["loss"] for r in read_metrics(straight_run[1])}
  resumed_losses = {r["step"]: r["loss"] for r in read_metrics(workdir)}
  assert straight_losses == resumed_losses


def test_partial_checkpoint_is_skipped(straight_run, tmp_path):
  config, _, straight = straight_run
  workdir = str(tmp_path)
  config.unlock()
  config.train.stop_after_steps = 6
  train_and_evaluate(config, workdir)
  # A save killed half-way: the newest step's array data is gone.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6", "state"))
  config.train.stop_after_steps = 0
  resumed = train_and_evaluate(config, workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints_unreadable", "6"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight["state"]), jax.device_get(resumed["state"]))


def test_restore_on_a_different_mesh(straight_run):
  config, workdir, straight = straight_run
  setup = build(config, 13, mesh=mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  ckpt = Checkpointer(workdir, 0, 3, False)
  step, state, data_state, _ = ckpt.restore(setup.abstract_state, shape_signature(setup.abstract_state))
  ckpt.close()
  assert step == 8 and data_state["step"] == 8
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight["state"]), jax.device_get(state))
  q = state.params["blocks"]["attn"]["q_proj"]
  assert q.sharding.mesh.shape == setup.mesh.shape
  assert q.sharding.spec == setup.state_shardings.params["blocks"]["attn"]["q_proj"].spec


def test_workdir_of_another_model_is_refused(straight_run):
  config, workdir, _ = straight_run
  config.unlock()
  config.model.d_model = 48
  config.train.num_steps = 10
  try:
    with pytest.raises(CheckpointError, match=r"holds a different model: parameter '.*' is \[.*\] there"):
      train_and_evaluate(config, workdir)
  finally:
    config.model.d_model = 32
    config.train.num_steps = 8


def test_nan_guard_stops_after_k_in_a_row(make_config, tmp_path):
  from polyglot_jax.objectives import lm

  class AlwaysNaN(lm.LanguageModelling):
    def loss_sums(self, model, batch, rng):
      loss_sum, weight, sums = super().loss_sums(model, batch, rng)
      return loss_sum * np.nan, weight, sums

  from polyglot_jax.objectives.base import register
  register("always_nan")(AlwaysNaN)
  config = make_config(objective="always_nan", optimizer__max_consecutive_skips=3, train__num_steps=20)
  with pytest.raises(TrainingError, match="3 non-finite updates in a row"):
    train_and_evaluate(config, str(tmp_path))


def test_profile_window_is_captured(make_config, tmp_path):
  config = make_config(train__num_steps=5, train__profile_start_step=2, train__profile_steps=2,
                       checkpoint__every_steps=0, data__eval_files=())
  train_and_evaluate(config, str(tmp_path))
  traces = [os.path.join(root, name) for root, _, names in os.walk(tmp_path / "profile")
            for name in names if name.endswith(".xplane.pb")]
  assert traces and os.path.getsize(traces[0]) > 1000
