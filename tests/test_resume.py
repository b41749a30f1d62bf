"""Resume with the default asynchronous checkpointing is bit for bit.

tests/test_train.py resumes with ``checkpoint.async_save=False``; real runs save
asynchronously (orbax writes the arrays on a background thread while the next
steps run on the donated state), so this run does too.
"""

import json
import os

import jax
import numpy as np
import pytest

from polyglot_jax.train import trainer
from polyglot_jax.train.checkpoint import Checkpointer
from polyglot_jax.train.trainer import train_and_evaluate

pytestmark = pytest.mark.slow

STEPS = 6
STOP = 3  # Not a multiple of every_steps: the forced save at 3 follows step 2's async save.


def read_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row["loss"] for row in map(json.loads, f)}


def assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_async_checkpoint_resume_is_bit_for_bit(make_config, tmp_path, monkeypatch):
  async_flags = []

  class Recording(Checkpointer):
    def __init__(self, *args):
      async_flags.append(args[3])
      super().__init__(*args)

  monkeypatch.setattr(trainer, "Checkpointer", Recording)
  # log_every_steps=1: one metrics row per step, so rows on both sides of the stop compare one to one.
  config = make_config(checkpoint__async_save=True, checkpoint__every_steps=2, train__num_steps=STEPS,
                       train__log_every_steps=1, data__eval_max_rows=1)
  straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
  straight = train_and_evaluate(config, straight_dir)
  assert straight["step"] == STEPS

  config.unlock()
  config.train.stop_after_steps = STOP
  first = train_and_evaluate(config, resumed_dir)
  assert first["stopped"] == "stop_after_steps" and first["step"] == STOP
  assert sorted(int(s) for s in os.listdir(os.path.join(resumed_dir, "checkpoints")) if s.isdigit()) == [2, STOP]
  config.train.stop_after_steps = 0
  resumed = train_and_evaluate(config, resumed_dir)
  assert resumed["step"] == STEPS and "stopped" not in resumed
  assert async_flags == [True] * 3  # Every run really checkpointed asynchronously.

  # Parameters bit for bit, leaf by leaf; then the rest of the state (moments, rng, counters).
  assert_trees_equal(straight["state"].params, resumed["state"].params)
  assert_trees_equal(straight["state"], resumed["state"])
  straight_losses, resumed_losses = read_losses(straight_dir), read_losses(resumed_dir)
  assert sorted(straight_losses) == list(range(1, STEPS + 1))
  assert resumed_losses == straight_losses
  assert straight["eval_after"] == resumed["eval_after"]
