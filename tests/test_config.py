"""Config loading, locking, overrides, durations, and the gin twin."""

import os

import pytest

from polyglot_jax import configs as config_lib
from polyglot_jax import gin_config
from conftest import REPO


def demo_config(*overrides):
  return config_lib.load_config(os.path.join(REPO, "configs", "demo.py"), overrides)


def test_overrides_are_typed():
  c = demo_config("model.num_layers=3", "optimizer.learning_rate=1e-4", "model.scan_layers=false",
                  "data.languages=eng,deu", "logical_axis_rules=[('embed', 'fsdp')]")
  assert c.model.num_layers == 3 and isinstance(c.model.num_layers, int)
  assert c.optimizer.learning_rate == 1e-4
  assert c.model.scan_layers is False
  assert c.data.languages == ("eng", "deu")
  assert c.logical_axis_rules == (("embed", "fsdp"),)


@pytest.mark.parametrize("override, message", [
    ("model.num_layer=3", "unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"),
    ("modle.num_layers=3", "unknown config key 'modle.num_layers'"),
    ("model.num_layers=three", "config key 'model.num_layers' is an int; got 'three'"),
    ("model.scan_layers=maybe", "config key 'model.scan_layers' is a bool"),
    ("model=3", "config key 'model' is a section"),
    ("optimizer.schedule=cosine_with_restarts", "config.optimizer.schedule='cosine_with_restarts'"),
    ("optimizer.grad_accum_steps=3", "global_batch_size=8 is not divisible by config.optimizer.grad_accum_steps=3"),
])
def test_config_mistakes_are_one_line_errors(override, message):
  with pytest.raises(config_lib.ConfigError) as info:
    demo_config(override)
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_config_file_errors(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.load_config(str(tmp_path / "nope.py"))
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  return {'a': 1}\n")
  with pytest.raises(config_lib.ConfigError, match="must return an ml_collections.ConfigDict"):
    config_lib.load_config(str(bad))


def test_durations():
  c = demo_config("train.num_tokens=10000")
  assert config_lib.resolve_steps(c) == -(-10000 // (8 * 256))
  c = demo_config("train.num_examples=20")
  assert config_lib.resolve_steps(c) == 3
  assert config_lib.resolve_steps(demo_config()) == 300


def test_gin_file_resolves_to_its_ml_collections_twin():
  from_gin = gin_config.config_from_gin([os.path.join(REPO, "gin", "demo.gin")])
  assert from_gin.to_dict() == demo_config().to_dict()
  assert from_gin.data.mixture.method == "temperature"  # A nested section, bound from gin.
  changed = gin_config.config_from_gin([os.path.join(REPO, "gin", "demo.gin")], ["model.num_layers = 2"])
  assert changed.model.num_layers == 2


def test_gin_typo_is_named():
  with pytest.raises(config_lib.ConfigError, match="Configurable 'model' doesn't have a parameter named 'num_layer'"):
    gin_config.config_from_gin([os.path.join(REPO, "gin", "demo.gin")], ["model.num_layer = 2"])


def test_config_json_round_trip():
  c = demo_config("model.num_layers=5")
  import json
  again = config_lib.config_from_dict(json.loads(config_lib.to_json(c)))
  assert again.to_dict() == c.to_dict()


def test_a_workdir_config_json_loads_as_a_config(tmp_path):
  c = config_lib.load_config(os.path.join(REPO, "configs", "demo.py"), ["model.d_model=96", "data.languages=eng,deu"])
  path = tmp_path / "config.json"
  path.write_text(config_lib.to_json(c))
  again = config_lib.load_config(str(path), ["train.num_steps=7"])
  assert again.model.d_model == 96 and again.data.languages == ("eng", "deu") and again.train.num_steps == 7
  again.train.num_steps = c.train.num_steps
  assert config_lib.to_json(again) == config_lib.to_json(c)
  path.write_text("{not json")
  with pytest.raises(config_lib.ConfigError, match="not readable JSON"):
    config_lib.load_config(str(path))
