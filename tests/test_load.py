"""polyglot_jax.load over the three kinds of directory, sharded or on one device, and init_from from the CLI."""

import json
import os

import jax
import numpy as np
import pytest

import polyglot_jax
from polyglot_jax import cli
from polyglot_jax import configs as config_lib
from polyglot_jax import loading
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.errors import ConfigError
from polyglot_jax.interop import import_hf

from test_interop import make_hf_model, save_hf, torch_logits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_SHAPE = dict(vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  root = tmp_path_factory.mktemp("load")
  model = make_hf_model("llama", tied=False, **HF_SHAPE)
  hf_dir = save_hf(model, root / "hf")
  converted = str(root / "converted")
  import_hf(hf_dir, converted, progress=lambda _: None)
  tokens = np.random.default_rng(0).integers(0, 2048, (2, 12))
  return {"hf": hf_dir, "converted": converted, "tokens": tokens, "reference": torch_logits(model, tokens)}


@pytest.mark.parametrize("kind", ["hf", "converted"])
def test_load_gives_the_reference_logits_on_one_device(hf_model, kind):
  loaded = polyglot_jax.load(hf_model[kind])
  assert loaded.config.model.d_model == 32 and loaded.config.model.num_kv_heads == 2
  logits = loaded.model(jax.numpy.asarray(hf_model["tokens"], jax.numpy.int32))
  assert logits.dtype == jax.numpy.float32 and logits.shape == (2, 12, 2048)
  np.testing.assert_allclose(np.asarray(logits), hf_model["reference"], atol=2e-6)
  assert loaded.tokenizer is None  # The tiny HF model ships no tokenizer.


def test_load_shards_over_a_mesh(hf_model):
  mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
  loaded = polyglot_jax.load(hf_model["converted"], mesh=mesh)
  q = loaded.params["blocks"]["attn"]["q_proj"]
  assert len(q.sharding.device_set) == 8
  assert "fsdp" in str(q.sharding.spec) and "tensor" in str(q.sharding.spec)
  logits = loaded.model(jax.numpy.asarray(hf_model["tokens"], jax.numpy.int32))
  np.testing.assert_allclose(np.asarray(logits), hf_model["reference"], atol=1e-5)


def test_train_from_a_converted_dir_needs_no_model_flags(hf_model, demo_data, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  args = ["train", "--config", os.path.join(REPO, "configs", "demo.py"), "--workdir", workdir,
          f"--config.init_from={hf_model['converted']}", f"--config.data.demo_dir={demo_data['dir']}",
          "--config.data.seq_len=32", "--config.train.num_steps=3", "--config.train.log_every_steps=1",
          "--config.checkpoint.async_save=false", "--config.data.eval_max_rows=1"]
  assert cli.main(args) == 0
  saved = json.load(open(os.path.join(workdir, "config.json")))["model"]
  assert (saved["d_model"], saved["num_layers"], saved["mlp_dim"], saved["vocab_size"]) == (32, 2, 64, 2048)
  assert saved["tie_embeddings"] is False
  # The training workdir loads through the same API, at its newest step.
  trained = polyglot_jax.load(workdir)
  assert trained.tokenizer is not None and trained.tokenizer.vocab_size() == 2048
  start = polyglot_jax.load(hf_model["converted"])
  moved = np.abs(np.asarray(trained.params["blocks"]["mlp"]["up_proj"]) - np.asarray(start.params["blocks"]["mlp"]["up_proj"]))
  assert moved.max() > 0  # Three steps with warmup: the last two update.
  # An explicit flag that contradicts the checkpoint names the key and both values.
  capsys.readouterr()
  assert cli.main(args + ["--config.model.d_model=48", "--workdir", str(tmp_path / "other")]) == 1
  err = capsys.readouterr().err
  assert "--config.model.d_model=48 contradicts config.init_from=" in err and "d_model=32" in err
  # An explicit flag that agrees is fine (it is checked, not refused).
  config = config_lib.load_config(os.path.join(REPO, "configs", "demo.py"),
                                  [f"init_from={hf_model['converted']}", "model.num_layers=2"])
  loading.apply_init_from(config, ["model.num_layers"])
  assert config.model.d_model == 32
  # A fine-tuning run on other data takes the starting model's tokenizer when it names none.
  tune = config_lib.load_config(os.path.join(REPO, "configs", "demo.py"), [f"init_from={workdir}", "data.source=jsonl"])
  loading.apply_init_from(tune)
  assert tune.data.tokenizer == os.path.abspath(os.path.join(demo_data["dir"], "spm.model"))


def test_apply_init_from_refuses_contradictions_by_key():
  config = config_lib.default_config()
  config.lock()
  with pytest.raises(Exception, match="is not a directory"):
    config.init_from = "/nonexistent"
    loading.apply_init_from(config, [])
  assert issubclass(ConfigError, ValueError)


def test_reading_a_training_checkpoint_logs_no_orbax_warning(tmp_path, caplog):
  # A training checkpoint's state lives in checkpoints/<step>/state; orbax's Checkpointer looks for a
  # step metadata file inside that item folder and warned on every read.
  import logging

  from polyglot_jax.interop import workdir as workdir_lib
  from polyglot_jax.train.checkpoint import Checkpointer
  state = {"params": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, "opt": {"m": np.ones(5, np.float32)}}
  checkpointer = Checkpointer(str(tmp_path), every_steps=1, max_to_keep=1, async_save=False)
  checkpointer.save(2, jax.tree.map(jax.numpy.asarray, state), {"pos": 2}, {"shapes": {}}, force=True)
  checkpointer.close()
  with caplog.at_level(logging.WARNING):
    params = workdir_lib._restore_numpy(str(tmp_path / "checkpoints" / "2" / "state"), "params")
  np.testing.assert_array_equal(params["w"], state["params"]["w"])
  assert isinstance(params["w"], np.ndarray) and "opt" not in params
  assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
